"""Domain errors and the ONE table that turns a Files API failure into an errno.

Everything the mount tells the kernel about a remote failure goes through `errno_for`; the FUSE
layer wraps each operation with `fuse_op`, so an unexpected exception becomes EIO (logged once),
never mfusepy's default EINVAL.
"""

from __future__ import annotations

import errno
import functools
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class GemfsError(Exception):
    """An error with an errno the kernel should see."""

    def __init__(self, err: int, message: str = "", failure: "ApiFailure | None" = None) -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.failure = failure  # the API failure behind it, when there was one


@dataclass
class ApiFailure(Exception):
    """A failed Files API call, reduced to what the errno table needs (never the API key).

    `code` is the HTTP status (0 for a connection failure or timeout), `status` the
    google.rpc status name, `reason` the ErrorInfo reason when the server gave one.
    """

    code: int
    status: str = ""
    message: str = ""
    reason: str = ""
    op: str = ""
    retryable: bool = field(default=False)

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        if self.code == 0:
            return f"{where}{self.message or 'connection failed'}"
        return f"{where}{self.code} {self.status} {self.message}".rstrip()


# Reasons gemfs' own server puts in ErrorInfo (gemfs/server/wire.py); on the real service these
# limits are UNK, so the table also maps the plain HTTP codes the semantics name.
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


def is_retryable(code: int, reason: str = "") -> bool:
    """429 (unless it is the storage quota), 5xx and connection failures are worth retrying."""
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
