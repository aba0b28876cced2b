"""Google-shaped API errors: the exception the routes raise and the one function that shapes
every error body (`{"error": {"code", "message", "status", "details"?}}`, wire doc §6.1).

The constructors below name each condition the server can report, so the routes never spell a
status or message themselves; the wording lives in `wire`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gemfs.server import store, wire

_TYPE_PREFIX = "type.googleapis.com/google.rpc."


class ApiError(Exception):
    """An error answer: HTTP code, google.rpc status name, message, optional details, and any
    extra headers (upload errors carry `X-Goog-Upload-Status: final`)."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        status: str | None = None,
        details: Sequence[Mapping[str, object]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.status = status or wire.STATUS_BY_HTTP_CODE.get(code, "UNKNOWN")
        self.message = message or wire.DEFAULT_MESSAGE_BY_HTTP_CODE.get(code, self.status)
        self.details = list(details)
        self.headers = dict(headers or {})
        super().__init__(f"{code} {self.status}: {self.message}")

    def body(self) -> dict[str, object]:
        return error_body(self.code, self.message, self.status, self.details)

    def upload_final(self) -> ApiError:
        """The same error marked terminal for the resumable protocol (§0 item 4, §9.17): the SDK
        stops at once instead of re-sending the chunk."""
        self.headers[wire.H_UPLOAD_STATUS] = wire.UPLOAD_FINAL
        return self


def error_body(
    code: int, message: str, status: str, details: Sequence[Mapping[str, object]] = ()
) -> dict[str, object]:
    """The single place an error body is shaped (§6.1); `details` is omitted when empty."""
    error: dict[str, object] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = [dict(d) for d in details]
    return {"error": error}


def error_info(reason: str, domain: str, metadata: Mapping[str, str] | None = None) -> dict:
    info: dict[str, object] = {
        "@type": _TYPE_PREFIX + "ErrorInfo",
        "reason": reason,
        "domain": domain,
    }
    if metadata:
        info["metadata"] = {k: str(v) for k, v in metadata.items()}
    return info


def localized_message(message: str) -> dict:
    return {"@type": _TYPE_PREFIX + "LocalizedMessage", "locale": wire.LOCALE, "message": message}


# --- Authentication (§6.2) ---------------------------------------------------------------------


def unregistered_caller() -> ApiError:
    return ApiError(403, wire.MSG_UNREGISTERED_CALLER, status="PERMISSION_DENIED")


def invalid_api_key() -> ApiError:
    return ApiError(
        400,
        wire.MSG_API_KEY_INVALID,
        status="INVALID_ARGUMENT",
        details=[
            error_info(
                wire.API_KEY_INVALID_REASON,
                wire.API_KEY_INVALID_DOMAIN,
                {"service": wire.API_SERVICE},
            ),
            localized_message(wire.MSG_API_KEY_INVALID),
        ],
    )


# --- Files --------------------------------------------------------------------------------------


def file_not_found(file_id: str) -> ApiError:
    """§6.2: unknown, deleted, expired and other-project Files are indistinguishable."""
    return ApiError(403, wire.MSG_FILE_NOT_FOUND.format(id=file_id), status="PERMISSION_DENIED")


def invalid_argument(message: str) -> ApiError:
    return ApiError(400, message, status="INVALID_ARGUMENT")


def already_exists() -> ApiError:
    return ApiError(409, wire.MSG_ALREADY_EXISTS, status="ALREADY_EXISTS")


def file_too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        400,
        wire.MSG_FILE_TOO_LARGE.format(size=size, limit=limit),
        status="INVALID_ARGUMENT",
        details=[
            error_info(
                wire.REASON_FILE_TOO_LARGE,
                wire.ERROR_DOMAIN,
                {"sizeBytes": str(size), "maxSizeBytes": str(limit)},
            )
        ],
    )


def quota_failure(violations: Sequence[Mapping[str, object]]) -> dict:
    return {"@type": _TYPE_PREFIX + "QuotaFailure", "violations": [dict(v) for v in violations]}


def quota_exceeded(quota: int) -> ApiError:
    """§12 (REAL): the project's file storage is full. Unlike a rate limit (a bare 429), it
    carries a QuotaFailure naming `FileStorageBytesPerProject`, so a client knows not to retry.
    The real answer says neither the usage nor the requested size, so neither does this one."""
    return ApiError(
        429,
        wire.MSG_QUOTA_EXCEEDED.format(metric=wire.QUOTA_METRIC_FILE_STORAGE, quota=quota),
        status="RESOURCE_EXHAUSTED",
        details=[
            quota_failure(
                [
                    {
                        "quotaMetric": wire.QUOTA_METRIC_FILE_STORAGE,
                        "quotaId": wire.QUOTA_ID_FILE_STORAGE,
                        "quotaValue": str(quota),
                    }
                ]
            )
        ],
    )


def upload_not_found() -> ApiError:
    return ApiError(404, wire.MSG_UPLOAD_NOT_FOUND, status="NOT_FOUND").upload_final()


def not_found() -> ApiError:
    return ApiError(404, wire.MSG_NOT_FOUND, status="NOT_FOUND")


def internal() -> ApiError:
    return ApiError(500, status="INTERNAL")


def from_store(exc: store.StoreError) -> ApiError:
    """The wire error for a refusal of the store."""
    if isinstance(exc, store.FileTooLarge):
        return file_too_large(exc.size, exc.limit)
    if isinstance(exc, store.QuotaExceeded):
        return quota_exceeded(exc.quota)
    if isinstance(exc, store.NameTaken):
        return already_exists()
    if isinstance(exc, store.SessionGone):
        return upload_not_found()
    return internal()
