"""One parametrized case per row of the errno table (docs/SEMANTICS.md, "Errors from the API")."""

import errno

import pytest

from gemfs.errors import (
    ApiFailure,
    GemfsError,
    errno_for,
    failure_from_answer,
    fuse_op,
    is_retryable,
    retry_after_of,
)


@pytest.mark.parametrize(
    "failure, on_file, expected",
    [
        (ApiFailure(400, "INVALID_ARGUMENT"), False, errno.EINVAL),
        (ApiFailure(400, "INVALID_ARGUMENT", reason="API_KEY_INVALID"), False, errno.EACCES),
        (ApiFailure(401, "UNAUTHENTICATED"), False, errno.EACCES),
        (ApiFailure(403, "PERMISSION_DENIED"), False, errno.EACCES),
        (ApiFailure(403, "PERMISSION_DENIED"), True, errno.ENOENT),
        (ApiFailure(404, "NOT_FOUND"), True, errno.ENOENT),
        (ApiFailure(409, "ALREADY_EXISTS"), False, errno.EEXIST),
        (ApiFailure(413, ""), False, errno.EFBIG),
        (ApiFailure(400, "INVALID_ARGUMENT", reason="FILE_TOO_LARGE"), False, errno.EFBIG),
        (ApiFailure(429, "RESOURCE_EXHAUSTED", reason="STORAGE_QUOTA_EXCEEDED"), False, errno.EDQUOT),
        (ApiFailure(429, "RESOURCE_EXHAUSTED"), False, errno.EIO),
        (ApiFailure(500, "INTERNAL"), False, errno.EIO),
        (ApiFailure(503, "UNAVAILABLE"), False, errno.EIO),
        (ApiFailure(0, "", "connection reset"), False, errno.EIO),
    ],
)
def test_errno_table(failure, on_file, expected):
    assert errno_for(failure, on_file=on_file) == expected


@pytest.mark.parametrize(
    "code, reason, retry",
    [(429, "", True), (503, "", True), (500, "", True), (0, "", True), (408, "", True),
     (429, "STORAGE_QUOTA_EXCEEDED", False), (400, "", False), (403, "", False), (404, "", False)],
)
def test_what_is_retried(code, reason, retry):
    assert is_retryable(code, reason) is retry


def test_fuse_op_maps_errors():
    from mfusepy import FuseOSError

    @fuse_op
    def boom(kind):
        if kind == "gemfs":
            raise GemfsError(errno.EDQUOT)
        if kind == "os":
            raise OSError(errno.ENOSPC, "full")
        raise KeyError("bug")

    for kind, expected in (("gemfs", errno.EDQUOT), ("os", errno.ENOSPC), ("bug", errno.EIO)):
        with pytest.raises(FuseOSError) as info:
            boom(kind)
        assert info.value.errno == expected


def quota_failure(**violation):
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
                      "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                   "violations": [violation]}]}}


@pytest.mark.parametrize(
    "body, expected, retry",
    [
        # The real service's full project (files-api-wire.md §12): by quotaId, or by metric alone.
        (quota_failure(quotaId="FileStorageBytesPerProject",
                       quotaMetric="generativelanguage.googleapis.com/file_storage_bytes"),
         errno.EDQUOT, False),
        (quota_failure(quotaMetric="generativelanguage.googleapis.com/file_storage_bytes"),
         errno.EDQUOT, False),
        # Another quota (requests per minute) is a rate limit: waited out, EIO at the deadline.
        (quota_failure(quotaId="GenerateRequestsPerMinutePerProject",
                       quotaMetric="generativelanguage.googleapis.com/generate_requests"),
         errno.EIO, True),
        ({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                    "message": "Resource has been exhausted (e.g. check quota)."}}, errno.EIO, True),
        # gemfs serve's older shape stays understood.
        ({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "full", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
             "reason": "STORAGE_QUOTA_EXCEEDED"}]}}, errno.EDQUOT, False),
        ("<html>Too Many Requests</html>", errno.EIO, True),
    ],
)
def test_429_answers_by_their_shape(body, expected, retry):
    failure = failure_from_answer(429, body, "upload")
    assert errno_for(failure) == expected
    assert failure.retryable is retry


@pytest.mark.parametrize(
    "body, header, seconds",
    [
        (None, "7", 7.0),
        (None, "Thu, 01 Jan 1970 00:00:30 GMT", 20.0),  # an HTTP date, 20 s after `now`
        ({"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": "22s"}]}}, None, 22.0),
        ({"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": {"seconds": 1, "nanos": 500000000}}]}}, None, 1.5),
        ({"error": {"details": []}}, None, None),
        (None, "soon", None),
    ],
)
def test_retry_after(body, header, seconds):
    assert retry_after_of(body, header, now=10.0) == seconds
