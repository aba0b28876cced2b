"""The FakeRemote itself: records shaped like the service's, faults on both sides of the work,
and the limits. The file-system tests are only as good as this double."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re

import pytest

from gemfs.errors import GemfsError
from gemfs.model import parse_time
from tests.fs.fake import FILE_TTL, FakeClock, FakeRemote


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote(FakeClock(), quota=1_000, max_file_size=600)


def upload(remote: FakeRemote, tmp_path, name: str, data: bytes, **kwargs):
    path = tmp_path / "staged"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return remote.upload(fd, len(data), name, "text/plain", **kwargs)
    finally:
        os.close(fd)


def test_record_is_shaped_like_the_services(remote, tmp_path):
    seen = []
    record = upload(remote, tmp_path, "dir/a.txt", b"hello", progress=seen.append)
    api = record.api
    assert list(api) == ["name", "displayName", "mimeType", "sizeBytes", "createTime", "updateTime",
                         "expirationTime", "sha256Hash", "uri", "state", "source"]
    assert re.fullmatch(r"files/[a-z0-9]{12}", api["name"])
    assert api["sizeBytes"] == "5" and record.size == 5
    assert base64.b64decode(api["sha256Hash"]).decode() == hashlib.sha256(b"hello").hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", api["createTime"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", api["expirationTime"])
    assert parse_time(api["expirationTime"]) - parse_time(api["createTime"]) == FILE_TTL
    assert record.create_time == remote.clock()
    assert (api["state"], api["source"], record.generated) == ("ACTIVE", "UPLOADED", False)
    assert api["uri"].endswith("/files/" + record.id)
    assert seen == [5]
    assert remote.data("dir/a.txt") == b"hello"


def test_empty_file_has_no_size_bytes(remote, tmp_path):
    assert "sizeBytes" not in upload(remote, tmp_path, "e", b"").api


def test_ids_are_unique_and_creation_strictly_ordered(remote, tmp_path):
    records = [upload(remote, tmp_path, f"f{i}", b"x") for i in range(20)]
    assert len({r.id for r in records}) == 20
    assert [r.create_time for r in records] == sorted({r.create_time for r in records})
    assert [r.id for r in remote.list_all()] == [r.id for r in reversed(records)]  # newest first


def test_fault_before_does_nothing(remote, tmp_path):
    remote.fail_next("upload", errno.EIO)
    with pytest.raises(GemfsError) as raised:
        upload(remote, tmp_path, "a", b"x")
    assert raised.value.errno == errno.EIO
    assert remote.live() == []
    assert [(r.op, r.outcome) for r in remote.requests] == [("upload", "failed-before")]
    upload(remote, tmp_path, "a", b"x")  # one fault, one failure
    assert len(remote.live()) == 1


def test_fault_after_does_the_work_then_fails(remote, tmp_path):
    record = upload(remote, tmp_path, "a", b"x")
    remote.fail_next("upload", errno.EIO, after=True)
    with pytest.raises(GemfsError):
        upload(remote, tmp_path, "b", b"y")
    assert remote.data("b") == b"y"
    remote.fail_next("delete", errno.EIO, True)
    with pytest.raises(GemfsError):
        remote.delete(record.id)
    assert remote.named("a") == []
    assert [r.outcome for r in remote.requests] == ["ok", "failed-after", "failed-after"]


def test_delete_of_a_missing_file_counts_as_deleted(remote):
    remote.delete("nosuchfile12")
    assert remote.count("delete") == 1


def test_get_of_a_missing_file_is_enoent(remote):
    with pytest.raises(GemfsError) as raised:
        remote.get("nosuchfile12")
    assert raised.value.errno == errno.ENOENT


def test_size_and_quota_limits(remote, tmp_path):
    with pytest.raises(GemfsError) as raised:
        upload(remote, tmp_path, "big", b"x" * 601)
    assert raised.value.errno == errno.EFBIG
    upload(remote, tmp_path, "a", b"x" * 600)
    with pytest.raises(GemfsError) as raised:
        upload(remote, tmp_path, "b", b"x" * 401)
    assert raised.value.errno == errno.EDQUOT
    assert [s.record.display_name for s in remote.live()] == ["a"]


def test_files_expire_with_the_clock(remote, tmp_path):
    record = upload(remote, tmp_path, "a", b"x")
    remote.clock.advance(FILE_TTL - 1)
    assert remote.get(record.id) == record
    remote.clock.advance(1)
    assert remote.list_all() == []
    with pytest.raises(GemfsError):
        remote.get(record.id)
    remote.quota = 600
    upload(remote, tmp_path, "b", b"x" * 600)  # an expired File holds no quota


def test_generated_files_download_and_uploaded_ones_do_not(remote, tmp_path):
    generated = remote.add_file("out.mp4", b"video", generated=True)
    assert generated.generated and generated.api["source"] == "GENERATED"
    remote.download(generated.id, str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == b"video"
    uploaded = upload(remote, tmp_path, "a", b"x")
    with pytest.raises(GemfsError) as raised:
        remote.download(uploaded.id, str(tmp_path / "no"))
    assert raised.value.errno == errno.EINVAL


def test_list_page_says_when_more_follow(remote):
    remote.quota = 10**9
    for i in range(101):
        remote.add_file(f"f{i}", b"")
    page, more = remote.list_page()
    assert (len(page), more) == (100, True)


def test_unknown_op_is_refused(remote):
    with pytest.raises(ValueError):
        remote.fail_next("rename")
