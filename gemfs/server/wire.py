"""Every choice about how the emulated Files API looks on the wire, in one place.

The contract is `/work/shared/reference/files-api-wire.md` ("the wire doc"). Values the doc
marks UNK or INF are decisions of ours; each carries a comment citing the section it comes
from, so changing a decision means editing this module only. The helpers below turn store
records into the exact JSON the real API writes (§3) and encode list page tokens (§9.7).
This module knows nothing about HTTP frameworks or storage.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from typing import Protocol

# --- Routing ----------------------------------------------------------------------------------

# §0 item 6, §1, §9.1: SDK 3.6.1 defaults to v1, older clients use v1beta; serve all three alike.
API_VERSIONS = ("v1", "v1beta", "v1alpha")

# §3.1 `uri`, §9.1: the real API always answers with the v1beta URI on its own host. The SDK
# never dereferences it for files (it only extracts the id), so keep the real value.
FILE_URI_PREFIX = "https://generativelanguage.googleapis.com/v1beta/files/"

# --- Ids and names ------------------------------------------------------------------------------

# §4 (REAL samples), §9.4: server-generated ids are 12 random chars of [a-z0-9].
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
ID_LENGTH = 12

# §4 (P1), §9.5: user-supplied ids are <= 40 chars of [a-z0-9-], not starting/ending with '-'.
USER_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")

# §4, §12 (REAL): Files made by other services (batch outputs: `batch-<36 chars>`, 42 in all)
# break the user rule. The admin API may create ids up to this length (64: INF, room to spare).
SERVICE_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
# §12 (REAL): delete refuses an id over 40 characters (get and list serve it).
DELETE_ID_MAX_CHARS = 40
MSG_DELETE_ID_TOO_LONG = "File ID (name excluding 'files/') cannot be more than 40 characters"

# §4 (P1): display names are at most 512 characters (counted as Unicode code points: INF).
DISPLAY_NAME_MAX_CHARS = 512

# --- Limits and retention -----------------------------------------------------------------------

# §5 (D4) says "48 h"; expirationTime = createTime + this (§3.1; the real value is a few ms
# earlier, which no client can rely on).
DEFAULT_FILE_TTL_SECONDS = 48 * 3600

# §5 (D4) says "2 GB" per file and "20 GB" per project without naming the unit (UNK). We read
# them as binary units (GiB) so that a file the docs call "2 GB" is never refused here.
DEFAULT_MAX_FILE_SIZE = 2 * 1024**3
DEFAULT_PROJECT_QUOTA = 20 * 1024**3

# §5, D5: Gemini's resumable session lifetime is UNK; the same Google protocol elsewhere keeps
# session URLs valid for 7 days, after which the sweep deletes the session.
UPLOAD_SESSION_LIFETIME_SECONDS = 7 * 24 * 3600

# §2.2: the value Gemini sends (if any) is UNK; 8 MiB is what Google clients commonly use and what
# the SDK's fixed CHUNK_SIZE is. Advertised only: chunk sizes are not enforced (§2.3, INF).
CHUNK_GRANULARITY = 8 * 1024 * 1024

# §2.2 (REAL R5 shows a long URL-safe token): bytes of randomness in an upload id.
UPLOAD_TOKEN_BYTES = 48

# §3.3, §9.12: how long a File stays PROCESSING after finalize, by class of MIME type. Real:
# video seconds to minutes; audio (and JSONL) ACTIVE in the finalize answer (R2, R3); PDF UNK.
# Tests set each (`--processing-seconds`) to see the life of a File.
PROCESSING_CLASSES = ("video", "audio", "pdf")
DEFAULT_VIDEO_PROCESSING_SECONDS = 2.0
DEFAULT_PROCESSING_SECONDS = {"video": DEFAULT_VIDEO_PROCESSING_SECONDS, "audio": 0.0, "pdf": 0.0}


def processing_class(mime_type: str) -> str | None:
    """The class whose processing time applies to a File of this MIME type, if any."""
    mime = mime_type.strip().lower()
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("audio/"):
        return "audio"
    if mime == "application/pdf":
        return "pdf"
    return None


# §2.5 (P2, D2): default 10, max 100. §9.7 (UNK, AIP convention): <= 0 -> default, > max -> max.
PAGE_SIZE_DEFAULT = 10
PAGE_SIZE_MAX = 100

# --- Enums (§3.1) -------------------------------------------------------------------------------

STATE_PROCESSING = "PROCESSING"
STATE_ACTIVE = "ACTIVE"
STATE_FAILED = "FAILED"
# §3.3 (the messages of FAILED Files are UNK): what the admin API's `fail` sets by default, a
# google.rpc.Status with code INTERNAL.
DEFAULT_FAILURE_CODE = 13
MSG_DEFAULT_FAILURE = "The file could not be processed."
SOURCE_UPLOADED = "UPLOADED"
SOURCE_GENERATED = "GENERATED"
SOURCE_REGISTERED = "REGISTERED"

# --- Resumable upload protocol (§2.2, §2.3) ---------------------------------------------------

# §0 item 3, §9.3: header names go out in exactly this case (never Go-canonical `-Url`).
H_UPLOAD_URL = "X-Goog-Upload-URL"
H_UPLOAD_CONTROL_URL = "X-Goog-Upload-Control-URL"
H_UPLOAD_STATUS = "X-Goog-Upload-Status"
H_UPLOAD_GRANULARITY = "X-Goog-Upload-Chunk-Granularity"
H_UPLOAD_SIZE_RECEIVED = "X-Goog-Upload-Size-Received"
H_CONTENT_TYPE = "Content-Type"

# §2.3 status values.
UPLOAD_ACTIVE = "active"
UPLOAD_FINAL = "final"
UPLOAD_CANCELLED = "cancelled"

# §12 (INF: the real values are not recorded): CORS. The Origin is reflected and the requested
# headers are allowed (what Google front ends do for API-key calls); these are the rest.
CORS_ALLOW_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
CORS_MAX_AGE_SECONDS = 3600
# What a page's script may read of an answer: the resumable protocol's headers (the JS SDK's
# web build reads the upload URL from the start answer, §12).
CORS_EXPOSE_HEADERS = ", ".join(
    (
        H_UPLOAD_URL,
        H_UPLOAD_STATUS,
        H_UPLOAD_SIZE_RECEIVED,
        H_UPLOAD_GRANULARITY,
        H_UPLOAD_CONTROL_URL,
    )
)

# §9.18 (INF): every JSON answer carries this content type.
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

# --- Errors (§6) --------------------------------------------------------------------------------

# §6.1: canonical google.rpc.Code names by HTTP status, for errors built from a bare status
# (fault injection, unknown routes).
STATUS_BY_HTTP_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# §6.1, §6.2: the standard messages Google front ends use for a bare status (INF).
DEFAULT_MESSAGE_BY_HTTP_CODE = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission.",
    404: "Requested entity was not found.",
    409: "Requested entity already exists",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "Deadline expired before operation could complete.",
}

# §6.2 (REAL): wording of the errors that real clients have printed.
MSG_FILE_NOT_FOUND = "You do not have permission to access the File {id} or it may not exist."
MSG_API_KEY_INVALID = "API key not valid. Please pass a valid API key."
MSG_UNREGISTERED_CALLER = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
# §6.2 (REAL): details of the invalid-key error.
API_KEY_INVALID_REASON = "API_KEY_INVALID"
API_KEY_INVALID_DOMAIN = "googleapis.com"
API_SERVICE = "generativelanguage.googleapis.com"
LOCALE = "en-US"

# Our own ErrorInfo reason for the per-file limit (UNK, §5 / §9.10): the mount maps errors by
# code, status and reason, never by message, so it carries a machine-readable reason.
ERROR_DOMAIN = "generativelanguage.googleapis.com"
REASON_FILE_TOO_LARGE = "FILE_TOO_LARGE"

# §12 (REAL): a full project is 429 RESOURCE_EXHAUSTED with this message and a QuotaFailure whose
# violation names this metric and quota id; that detail is what tells it from a rate limit.
QUOTA_METRIC_FILE_STORAGE = "generativelanguage.googleapis.com/file_storage_bytes"
QUOTA_ID_FILE_STORAGE = "FileStorageBytesPerProject"
MSG_QUOTA_EXCEEDED = "Quota exceeded for metric: {metric}, limit: {quota}"

# §9.10 (UNK): 400 INVALID_ARGUMENT at start when the declared size is over the per-file limit.
MSG_FILE_TOO_LARGE = "File size {size} bytes exceeds the maximum allowed size of {limit} bytes."
# §9.5 (UNK): 400 for an ill-formed user-supplied name, 409 for a taken one.
MSG_INVALID_NAME = (
    "Invalid file name '{name}': the id after 'files/' must be 1-40 characters of lowercase "
    "letters, digits and dashes, and may not start or end with a dash."
)
MSG_ALREADY_EXISTS = "Requested entity already exists"
# §4 (P1 limit; message UNK).
MSG_DISPLAY_NAME_TOO_LONG = "Display name must be at most 512 characters."
MSG_INVALID_DISPLAY_NAME = "Invalid display name: it must be a string."
# §9.8 (UNK): missing MIME type -> 400 at start.
MSG_MISSING_MIME = "Missing MIME type: set X-Goog-Upload-Header-Content-Type or file.mimeType."
# §12 (UNK): Google's resumable protocol lets a client start without a size (the total is what
# has arrived at `upload, finalize`), and Google's own clients use that; whether Gemini accepts it
# is not recorded. We accept it, so that a client may start uploading a file still being written:
# the per-file limit and the quota are then checked as the bytes arrive (a chunk over either ends
# the session with the error a start would get). `gemfs serve --require-upload-size` refuses
# such a start with 400 MSG_MISSING_SIZE instead, for clients to test their fallback.
UNSIZED_UPLOADS_ACCEPTED = True
MSG_MISSING_SIZE = "Missing upload size: set X-Goog-Upload-Header-Content-Length or file.sizeBytes."
MSG_INVALID_SIZE = "Invalid upload size: {value!r}."
# UNK: only the resumable protocol (the one the SDK uses, §2.2) is implemented.
MSG_UNSUPPORTED_PROTOCOL = (
    "Unsupported upload request: expected X-Goog-Upload-Protocol: resumable and "
    "X-Goog-Upload-Command: start."
)
# INF: Google front ends' wording for an oversized request (JSON bodies here are tiny).
MSG_PAYLOAD_TOO_LARGE = "Request payload size exceeds the limit: {limit} bytes."
# INF: the protobuf JSON parser's wording for a body that is not JSON.
MSG_INVALID_JSON = "Invalid JSON payload received. {detail}"
# §2.5 / §9.7 (UNK).
MSG_INVALID_PAGE_TOKEN = "Invalid page token."
# INF: the wording of Google's query-parameter parser for a non-integer int32.
MSG_INVALID_PAGE_SIZE = "Invalid value at 'page_size' (TYPE_INT32), \"{value}\""
# §9.15 (UNK).
MSG_DOWNLOAD_NOT_GENERATED = "Only generated files can be downloaded."
# §9.17 (UNK): terminal chunk errors; all carry `X-Goog-Upload-Status: final`.
MSG_OFFSET_MISMATCH = (
    "Invalid upload offset {offset}: the upload session has received {received} bytes."
)
MSG_SIZE_MISMATCH = (
    "Upload finalized with {received} bytes, but the declared size was {declared} bytes."
)
MSG_TOO_MANY_BYTES = "Upload exceeds the declared size of {declared} bytes."
MSG_MISSING_OFFSET = "Missing or invalid X-Goog-Upload-Offset header."
MSG_UNKNOWN_COMMAND = "Invalid X-Goog-Upload-Command: '{command}'."
MSG_ALREADY_FINALIZED = "The upload session has already been finalized."
# UNK: unknown, cancelled, failed or expired upload session -> 404 + `final`.
MSG_UPLOAD_NOT_FOUND = "The upload session does not exist or has expired."
# §2.8 register (UNK details).
MSG_REGISTER_URIS = "uris must be a non-empty list of gs:// URIs."
# INF: Google's answer for a path no method is bound to.
MSG_NOT_FOUND = "Method not found."
# The body of a `garbage` fault: what a misbehaving proxy might send instead of JSON.
FAULT_GARBAGE_BODY = b"<html><body>502 Bad Gateway (gemfs fault injection)</body></html>"


# --- File resource (§3) -------------------------------------------------------------------------


class FileLike(Protocol):
    """What `file_resource` needs to know about a stored File."""

    id: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    sha256_hex: str | None
    create_us: int
    ready_us: int
    expire_us: int
    source: str
    error_code: int | None
    error_message: str | None


def timestamp_us(us: int) -> str:
    """RFC 3339, `Z`, 6 fractional digits: how createTime/updateTime look (§3.2)."""
    seconds, micros = divmod(us, 1_000_000)
    base = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{micros:06d}Z"


def timestamp_ns(ns: int) -> str:
    """RFC 3339, `Z`, 9 fractional digits: how expirationTime looks (§3.2)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def sha256_field(hex_digest: str) -> str:
    """§3.1: `sha256Hash` is base64 of the lower-case *hex* digest, not of the raw digest."""
    return base64.b64encode(hex_digest.lower().encode("ascii")).decode("ascii")


def file_uri(file_id: str) -> str:
    return FILE_URI_PREFIX + file_id


def file_resource(rec: FileLike, now_us: int) -> dict[str, object]:
    """The File as proto3 JSON (§3.1): camelCase, defaults omitted, int64 as string.

    Key order follows the real responses (§3.2) and, for `error`, the proto's field order.
    State is derived from the clock so that processing finishes without a background task
    (§9.12): once `ready_us` has passed the File is ACTIVE, or FAILED with its `error` if it was
    made to fail, and its updateTime is the moment it became so.
    """
    active = now_us >= rec.ready_us
    failed = active and rec.error_code is not None
    out: dict[str, object] = {"name": f"files/{rec.id}"}
    if rec.display_name:
        out["displayName"] = rec.display_name
    out["mimeType"] = rec.mime_type
    if rec.size_bytes:
        out["sizeBytes"] = str(rec.size_bytes)
    out["createTime"] = timestamp_us(rec.create_us)
    out["updateTime"] = timestamp_us(rec.ready_us if active else rec.create_us)
    out["expirationTime"] = timestamp_ns(rec.expire_us * 1000)
    if rec.sha256_hex:
        out["sha256Hash"] = sha256_field(rec.sha256_hex)
    out["uri"] = file_uri(rec.id)
    if rec.source == SOURCE_GENERATED:
        out["downloadUri"] = file_uri(rec.id) + ":download?alt=media"
    out["state"] = STATE_FAILED if failed else STATE_ACTIVE if active else STATE_PROCESSING
    out["source"] = rec.source
    if failed:
        out["error"] = {"code": rec.error_code, "message": rec.error_message or ""}
    return out


# --- List pagination (§2.5, §9.7) ------------------------------------------------------------


class InvalidPageToken(ValueError):
    pass


_TOKEN_PREFIX = "g1:"  # format version, so a future format can reject old tokens cleanly
_TOKEN_BODY_RE = re.compile(r"g1:(\d{1,20}):([a-z0-9-]{1,64})")


def encode_page_token(create_us: int, file_id: str) -> str:
    """Keyset token: the (createTime, id) of the last File on the page, base64url.

    A keyset rather than an offset keeps paging correct while Files are added or deleted
    between pages: nothing is skipped or repeated among the Files that exist throughout.
    """
    raw = f"{_TOKEN_PREFIX}{create_us}:{file_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidPageToken(token) from exc
    m = _TOKEN_BODY_RE.fullmatch(raw)
    if m is None:
        raise InvalidPageToken(token)
    return int(m.group(1)), m.group(2)


def clamp_page_size(requested: int | None) -> int:
    if requested is None or requested <= 0:
        return PAGE_SIZE_DEFAULT
    return min(requested, PAGE_SIZE_MAX)
