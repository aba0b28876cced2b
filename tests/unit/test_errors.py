"""One parametrized case per row of the errno table (docs/SEMANTICS.md, "Errors from the API")."""

import errno

import pytest

from gemfs.errors import ApiFailure, GemfsError, errno_for, fuse_op, is_retryable


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
