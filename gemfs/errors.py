"""Domain errors and the ONE table that turns a Files API failure into an errno.

Everything the mount tells the kernel about a remote failure goes through `errno_for`; the FUSE
layer wraps each operation with `fuse_op`, so an unexpected exception becomes EIO (logged once),
never mfusepy's default EINVAL.
"""

from __future__ import annotations

import email.utils
import errno
import functools
import logging
import re
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class GemfsError(Exception):
    """An error with an errno the kernel should see."""

    def __init__(self, err: int, message: str = "", failure: "ApiFailure | None" = None) -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.failure = failure  # the API failure behind it, when there was one

    @classmethod
    def of(cls, failure: "ApiFailure", *, on_file: bool = False) -> "GemfsError":
        """What a call that failed for good raises: the errno of the failure's kind (`errno_for`),
        its words, and the failure itself."""
        return cls(errno_for(failure, on_file=on_file), str(failure), failure)


@dataclass
class ApiFailure(Exception):
    """A failed Files API call, reduced to what the errno table needs (never the API key).

    `code` is the HTTP status (0 for a connection failure or timeout), `status` the
    google.rpc status name, `reason` the ErrorInfo reason when the server gave one (or
    STORAGE_QUOTA_EXCEEDED for the real service's QuotaFailure on file storage, see
    `reason_of`), `retry_after` the seconds the server asked to wait (Retry-After, RetryInfo).
    """

    code: int
    status: str = ""
    message: str = ""
    reason: str = ""
    op: str = ""
    retryable: bool = field(default=False)
    retry_after: float | None = None

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        if self.code == 0:
            return f"{where}{self.message or 'connection failed'}"
        return f"{where}{self.code} {self.status} {self.message}".rstrip()


# Reasons gemfs' own server puts in ErrorInfo (gemfs/server/wire.py), and STORAGE_QUOTA_EXCEEDED
# for the real service's QuotaFailure on file storage too (`reason_of`); the table also maps the
# plain HTTP codes the semantics name.
REASON_ERRNO = {
    "FILE_TOO_LARGE": errno.EFBIG,
    "STORAGE_QUOTA_EXCEEDED": errno.EDQUOT,
    "API_KEY_INVALID": errno.EACCES,
}

# The errno table of docs/SEMANTICS.md, keyed by HTTP status. 403 on a File means the File is gone
# ("...or it may not exist"), on anything else that the key may not do it.
CODE_ERRNO = {
    400: errno.EINVAL,
    401: errno.EACCES,
    403: errno.EACCES,
    404: errno.ENOENT,
    409: errno.EEXIST,
    413: errno.EFBIG,
    429: errno.EIO,
}


# The real service's answer for a full project (files-api-wire.md §12): 429 RESOURCE_EXHAUSTED with
# a google.rpc.QuotaFailure whose violation names the project's file storage. Matched by quotaId,
# or by the metric for a violation that names only that.
STORAGE_QUOTA_IDS = frozenset({"FileStorageBytesPerProject"})
STORAGE_QUOTA_METRIC_SUFFIX = "/file_storage_bytes"
STORAGE_QUOTA_REASON = "STORAGE_QUOTA_EXCEEDED"


def _is_storage_violation(violation: object) -> bool:
    if not isinstance(violation, dict):
        return False
    quota_id = violation.get("quotaId") or violation.get("quota_id") or ""
    metric = violation.get("quotaMetric") or violation.get("quota_metric") or ""
    return quota_id in STORAGE_QUOTA_IDS or (
        isinstance(metric, str) and metric.endswith(STORAGE_QUOTA_METRIC_SUFFIX))


def _details(body: object) -> list:
    """The `details` list of a google.rpc.Status answer (`{"error": {...}}` or the status itself)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        return []
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def reason_of(body: object) -> str:
    """The reason the errno table keys on: STORAGE_QUOTA_EXCEEDED when a QuotaFailure names the
    project's file storage (the real service's shape), else the first ErrorInfo reason."""
    details = _details(body)
    for detail in details:
        if detail.get("@type", "").endswith("google.rpc.QuotaFailure") or "violations" in detail:
            violations = detail.get("violations")
            if isinstance(violations, list) and any(map(_is_storage_violation, violations)):
                return STORAGE_QUOTA_REASON
    for detail in details:
        if isinstance(detail.get("reason"), str) and detail["reason"]:
            return detail["reason"]
    return ""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")


def retry_after_of(body: object, header: str | None = None, now: float | None = None) -> float | None:
    """Seconds the server asked the client to wait: the Retry-After header (seconds or an HTTP
    date) or a google.rpc.RetryInfo `retryDelay` ("22s"); None when it asked nothing."""
    if header:
        text = header.strip()
        if text.isdigit():
            return float(text)
        try:
            when = email.utils.parsedate_to_datetime(text).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return max(0.0, when - (time.time() if now is None else now))
    for detail in _details(body):
        delay = detail.get("retryDelay") or detail.get("retry_delay")
        if isinstance(delay, str) and (m := _DURATION.match(delay)):
            return float(m.group(1))
        if isinstance(delay, dict):  # the proto Duration in its object form
            try:
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            except (TypeError, ValueError):
                pass
    return None


def failure_from_answer(code: int, body: object, op: str, retry_after_header: str | None = None,
                        fallback_message: str = "") -> ApiFailure:
    """An ApiFailure from an HTTP error answer: its status, its google.rpc.Status body (JSON
    already decoded; anything else counts as no body) and its Retry-After header."""
    error = body.get("error", body) if isinstance(body, dict) else {}
    error = error if isinstance(error, dict) else {}
    status = error.get("status") if isinstance(error.get("status"), str) else ""
    message = error.get("message") if isinstance(error.get("message"), str) else fallback_message
    reason = reason_of(body)
    return ApiFailure(code, status, message, reason, op, retryable=is_retryable(code, reason),
                      retry_after=retry_after_of(body, retry_after_header))


def is_retryable(code: int, reason: str = "") -> bool:
    """429 (unless it is the storage quota: waiting frees no space), 5xx and connection failures
    are worth retrying."""
    if reason in REASON_ERRNO:
        return False
    return code == 0 or code == 408 or code == 429 or code >= 500


def errno_for(failure: ApiFailure, *, on_file: bool = False) -> int:
    """The errno for a failed call; `on_file` says the call named one File (get, delete, download)."""
    if failure.reason in REASON_ERRNO:
        return REASON_ERRNO[failure.reason]
    if failure.code == 403 and on_file and failure.status == "PERMISSION_DENIED":
        return errno.ENOENT
    return CODE_ERRNO.get(failure.code, errno.EIO)


def _describe(args: tuple) -> str:
    """An operation's arguments for the debug log: bytes as their length, never their content."""
    return ", ".join(f"<{len(a)} bytes>" if isinstance(a, (bytes, bytearray)) else repr(a) for a in args)


def fuse_op(func):
    """Wrap a FUSE operation: GemfsError and OSError pass their errno, anything else is EIO.
    With --debug, each call is logged with its arguments and outcome."""
    from mfusepy import FuseOSError

    name = func.__name__

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("op %s(%s)", name, _describe(args[1:]))
        try:
            return func(*args, **kwargs)
        except FuseOSError as e:
            log.debug("op %s -> %s", name, errno.errorcode.get(e.errno, e.errno))
            raise
        except GemfsError as e:
            log.debug("op %s -> %s %s", name, errno.errorcode.get(e.errno, e.errno), e)
            raise FuseOSError(e.errno) from e
        except OSError as e:
            if isinstance(e.errno, int) and e.errno > 0:
                raise FuseOSError(e.errno) from e
            log.exception("%s failed", func.__name__)
            raise FuseOSError(errno.EIO) from e
        except Exception as e:
            log.exception("%s failed unexpectedly", func.__name__)
            raise FuseOSError(errno.EIO) from e

    return wrapper
