"""The Files API: list, get, delete and download through the google-genai SDK, uploads through
gemfs's own resumable client (`gemfs.upload`), which resumes a session instead of restarting.

The only module that imports `google.genai`. Every call retries inside one bounded deadline:
429, 5xx and connection failures are retried with jittered exponential backoff until the
deadline (counted from the call's first failure), then raised as a GemfsError carrying the
errno of the one table in `errors`. Each final failure is logged once with its HTTP status and
message; the API key never is.

Why a loop of its own and not the SDK's `HttpOptions(retry_options=HttpRetryOptions(...))`
(checked against google-genai 3.6.1, which runs it through tenacity): it stops after a count of
attempts, never after a time, so it cannot keep `--retry-deadline`; it waits its own backoff and
ignores `Retry-After` and `google.rpc.RetryInfo`; it retries every 429 by status, so a full
project (429 with a QuotaFailure) would be retried instead of EDQUOT at once (and leaving 429
out would leave rate limits unretried); of transport errors it retries only connect errors and
timeouts, so a reset or a closed connection after the server did the work (a delete whose answer
was lost) is not retried; a garbled 200 fails after its retries, when the JSON is read; and its
options take no clock or sleep, so tests would wait. tenacity itself could hold this loop, but
the rules (`failure_from`, the wait asked for, the deadline from the first failure) would all be
ours as callbacks: no shorter, one more dependency.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import httpx
import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gemfs.errors import ApiFailure, GemfsError, errno_for, failure_from_answer
from gemfs.model import FileRecord
from gemfs.upload import DEFAULT_CHUNK_SIZE, UploadResult, Uploader, UploadStream

log = logging.getLogger(__name__)

T = TypeVar("T")

LIST_PAGE_SIZE = 100  # the API's maximum (files-api-wire.md §2.5)

# The order of the proto's fields (files-api-wire.md §3.1), which is the order the API writes.
_FIELD_ORDER = [
    "name", "displayName", "mimeType", "sizeBytes", "createTime", "updateTime", "expirationTime",
    "sha256Hash", "uri", "downloadUri", "state", "source", "error", "videoMetadata",
]


# The SDK talks through httpx2 (a fork of httpx, with its own exception classes), the upload
# client through httpx: a reset or timeout of either is a transport failure.
_TRANSPORT_ERRORS = (ConnectionError, TimeoutError, httpx.HTTPError, httpx2.HTTPError)


def tls_context(base_url: str) -> ssl.SSLContext:
    """The one TLS context of a Remote's clients: the SDK's (httpx2, aiohttp, websockets) and the
    upload client. Left to themselves each builds its own from the CA bundle: four at every mount
    start, ~0.3 s of CPU. An https URL gets the trust the SDK gives the client gemfs calls it
    through, httpx2: SSL_CERT_FILE and SSL_CERT_DIR when set, else httpx2's default (the
    system's store; the SDK's aiohttp and websocket clients, unused here, and httpx's upload
    client took certifi's bundle, which the upload now shares with list, get and delete). A
    plain-http URL (a local server) makes no TLS connection, so it gets a context that trusts
    nothing: an https upload URL such a server handed out would fail closed."""
    if not base_url.lower().startswith("https:"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, with no CA: fails closed
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None,
                                          capath=os.environ.get("SSL_CERT_DIR") or None)
    return httpx2.create_ssl_context()


def api_json(file: types.File) -> dict:
    """An SDK File back into the API's camelCase JSON (proto3 mapping: int64 as a string)."""
    data = file.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("sdkHttpResponse", None)
    if "sizeBytes" in data:
        data["sizeBytes"] = str(data["sizeBytes"])
    ordered = {key: data.pop(key) for key in _FIELD_ORDER if key in data}
    ordered.update(data)
    return ordered


def to_record(file: types.File) -> FileRecord:
    return FileRecord.from_api(api_json(file))


def failure_from(exc: BaseException, op: str) -> ApiFailure | None:
    """What an exception from the SDK says about the call, or None when it is not an API failure."""
    if isinstance(exc, genai_errors.APIError):
        code = exc.code if isinstance(exc.code, int) else 0
        headers = getattr(getattr(exc, "response", None), "headers", None)
        retry_after = headers.get("retry-after") if hasattr(headers, "get") else None
        failure = failure_from_answer(code, exc.details, op, retry_after)
        failure.status = exc.status or failure.status
        failure.message = exc.message or failure.message
        return failure
    if isinstance(exc, _TRANSPORT_ERRORS):
        return ApiFailure(0, "", f"{type(exc).__name__}: {exc}", "", op, retryable=True)
    if isinstance(exc, ValueError):
        # The SDK's own words for a server that broke the upload protocol or answered garbage
        # (UnknownApiResponseError, "Upload status is not finalized", JSON decode errors).
        return ApiFailure(0, "", f"bad response: {exc}", "", op, retryable=True)
    return None


class Remote:
    """One project's Files API, with retries inside a deadline.

    `clock` (monotonic seconds) and `sleep` drive every retry wait, so tests can run the retry
    rules without waiting; `transport` (an httpx transport) carries the upload client's requests.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        deadline: float = 60.0,
        request_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.base_url = base_url or "https://generativelanguage.googleapis.com/"
        tls = tls_context(self.base_url)
        # `ssl` is how the SDK's aiohttp and websocket clients take it; httpx2 drops that key.
        options = types.HttpOptions(timeout=int(request_timeout * 1000),
                                    client_args={"verify": tls},
                                    async_client_args={"verify": tls, "ssl": tls})
        if base_url:
            options.base_url = base_url
        self._client = genai.Client(api_key=api_key, http_options=options)
        self.deadline = deadline
        self.calls = 0  # guarded by _lock: API calls made, for `gemfs status`
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        # The upload client talks to the URL and API version the SDK uses, with its headers
        # (API key, user agent); httpx.Client is thread-safe, one per Remote.
        # (The SDK's resolved options are private; without them: its defaults, and the key.)
        sdk_options = getattr(getattr(self._client, "_api_client", None), "_http_options", None)
        root = (getattr(sdk_options, "base_url", None) or self.base_url).rstrip("/")
        version = getattr(sdk_options, "api_version", "v1")
        start_url = f"{root}/upload/{version}/files" if version else f"{root}/upload/files"
        headers = dict(getattr(sdk_options, "headers", None) or {})
        headers.setdefault("x-goog-api-key", api_key.strip())
        self._http = httpx.Client(timeout=request_timeout, transport=transport, verify=tls)
        self._hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gemfs-sha256")
        self.uploader = Uploader(
            self._http, start_url, headers, deadline=deadline,
            clock=clock, sleep=sleep, hasher=self._hasher, delete=self.delete,
            on_request=self._count, chunk_size=chunk_size)

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def _call(self, op: str, fn: Callable[[], T], *, on_file: bool = False,
              deadline: float | None = None) -> T:
        budget = self.deadline if deadline is None else deadline
        # The deadline runs from the first failure: a long but healthy transfer (a big upload)
        # must not use up the time its retries are owed.
        end: float | None = None
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            self._count()
            log.debug("api %s (attempt %d)", op, attempt)
            try:
                return fn()
            except Exception as exc:
                failure = failure_from(exc, op)
                if failure is None:
                    raise
                wait = failure.retry_after if failure.retry_after is not None else (
                    delay * (0.5 + random.random()))
                now = self._clock()
                if end is None:
                    end = now + budget
                if failure.retryable and now + wait < end:
                    log.debug("%s failed (attempt %d), retrying in %.2fs: %s", op, attempt, wait, failure)
                    self._sleep(wait)
                    delay = min(delay * 2, 8.0)
                    continue
                log.warning("%s failed after %d attempt(s): %s", op, attempt, failure)
                raise GemfsError.of(failure, on_file=on_file) from exc

    def list_page(self, deadline: float | None = None) -> tuple[list[FileRecord], bool]:
        """One page of `files.list` (the key check at mount); True when more pages follow."""
        def page():
            pager = self._client.files.list(config=types.ListFilesConfig(page_size=LIST_PAGE_SIZE))
            return [to_record(f) for f in pager.page], bool(pager.config.get("page_token"))
        return self._call("list", page, deadline=deadline)

    def list_all(self) -> list[FileRecord]:
        """Every File of the project, through `files.list` pages of 100."""
        def listing():
            pager = self._client.files.list(config=types.ListFilesConfig(page_size=LIST_PAGE_SIZE))
            return [to_record(f) for f in pager]
        return self._call("list", listing)

    def get(self, file_id: str) -> FileRecord:
        return self._call("get", lambda: to_record(self._client.files.get(name=file_id)), on_file=True)

    def delete(self, file_id: str) -> None:
        """Delete a File; one that is already gone counts as deleted."""
        try:
            self._call("delete", lambda: self._client.files.delete(name=file_id), on_file=True)
        except GemfsError as e:
            if e.errno != errno_for(ApiFailure(404)):
                raise

    def upload(self, fd: int, size: int, display_name: str, mime_type: str,
               progress: Callable[[int], None] | None = None) -> FileRecord:
        """Upload `size` bytes of a staged descriptor through one resumable session (resumed,
        not restarted, after a fault). The File's record; `upload_verified` also gives the
        SHA-256 checked against the File's."""
        return self.upload_verified(fd, size, display_name, mime_type, progress).record

    def upload_verified(self, fd: int, size: int, display_name: str, mime_type: str,
                        progress: Callable[[int], None] | None = None) -> UploadResult:
        """As `upload`, with the verified SHA-256 (hex), bytes re-sent and sessions used."""
        return self.uploader.upload(fd, size, display_name, mime_type, progress)

    def stream(self, fd: int, display_name: str, mime_type: str) -> UploadStream | None:
        """An upload that starts before `fd` is fully written (gemfs/upload.py UploadStream), or
        None when this server wants sizes at start."""
        return self.uploader.stream(fd, display_name, mime_type)

    def download(self, file_id: str, destination: str) -> None:
        """Stream a generated File's bytes into `destination`."""
        def fetch():
            with open(destination, "wb") as out:
                self._client.files.download(file=f"files/{file_id}", destination=out)
        self._call("download", fetch, on_file=True)

    def close(self) -> None:
        self._client.close()
        self._http.close()
        self._hasher.shutdown(wait=True)
