"""Uploads started without a size (wire `UNSIZED_UPLOADS_ACCEPTED`): the File is as big as what
arrived by `upload, finalize`, the per-file limit and the quota are checked as the bytes come,
and `--require-upload-size` refuses such a start as a service that needs the size would."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemfs.server import store as store_mod
from gemfs.server.config import project_of_key
from gemfs.server.store import Limits, Store
from tests.conftest import KEY_A, KEY_B
from tests.server.rawhttp import send_chunk, upload_command

MIB = 1024 * 1024
GRANULARITY = 8 * MIB
START = {
    "X-Goog-Upload-Protocol": "resumable",
    "X-Goog-Upload-Command": "start",
    "X-Goog-Upload-Header-Content-Type": "application/octet-stream",
}
QUOTA_FAILURE_1000 = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/file_storage_bytes",
                "quotaId": "FileStorageBytesPerProject",
                "quotaValue": "1000",
            }
        ],
    }
]


def start_unsized(http: httpx.Client, key: str = KEY_A, **headers: str) -> httpx.Response:
    """A start with no X-Goog-Upload-Header-Content-Length and no size in the body."""
    return http.post(
        "/upload/v1beta/files",
        headers={"x-goog-api-key": key, **START, **headers},
        json={"file": {"display_name": "unsized"}},
    )


def unsized_url(http: httpx.Client, key: str = KEY_A) -> str:
    r = start_unsized(http, key)
    assert r.status_code == 200, r.text
    return r.headers["x-goog-upload-url"]


def hex_of(file: dict) -> str:
    return base64.b64decode(file["sha256Hash"]).decode("ascii")


def files_of(http: httpx.Client, key: str = KEY_A) -> list[dict]:
    return http.get("/v1beta/files", headers={"x-goog-api-key": key}).json().get("files", [])


def usage(srv, key: str = KEY_A) -> int:
    """The project's quota usage as the store counts it (the in-process server's store)."""
    return srv.store.usage(project_of_key(key))


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


# --- the happy paths ---------------------------------------------------------------------------


def test_start_without_size_answers_like_a_sized_start(http: httpx.Client) -> None:
    r = start_unsized(http)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["x-goog-upload-status"] == "active"
    assert r.headers["x-goog-upload-control-url"] == r.headers["x-goog-upload-url"]
    assert r.headers["x-goog-upload-chunk-granularity"] == str(GRANULARITY)
    # An empty size header with no size in the body is the same as none.
    empty = start_unsized(http, **{"X-Goog-Upload-Header-Content-Length": ""})
    assert empty.status_code == 200, empty.text


def test_zero_bytes(http: httpx.Client) -> None:
    url = unsized_url(http)
    r = send_chunk(http, url, 0, b"", finalize=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-goog-upload-status"] == "final"
    assert r.headers["x-goog-upload-size-received"] == "0"
    f = r.json()["file"]
    assert "sizeBytes" not in f  # proto3 JSON omits a zero size, as for sized uploads
    assert hex_of(f) == hashlib.sha256(b"").hexdigest()
    assert f["displayName"] == "unsized"


def test_one_chunk(http: httpx.Client) -> None:
    data = os.urandom(1234)
    r = send_chunk(http, unsized_url(http), 0, data, finalize=True)
    assert r.status_code == 200, r.text
    f = r.json()["file"]
    assert f["sizeBytes"] == "1234" and hex_of(f) == hashlib.sha256(data).hexdigest()
    got = http.get(f"/v1beta/{f['name']}", headers={"x-goog-api-key": KEY_A}).json()
    assert got == f


def test_several_granular_chunks_and_a_short_last(server, http: httpx.Client) -> None:
    data = os.urandom(2 * GRANULARITY + 12345)
    url = unsized_url(http)
    for offset in (0, GRANULARITY):
        r = send_chunk(http, url, offset, data[offset : offset + GRANULARITY])
        assert (r.status_code, r.headers["x-goog-upload-status"]) == (200, "active")
        assert r.headers["x-goog-upload-size-received"] == str(offset + GRANULARITY)
        # Mid-way, the session reserves what it has received.
        assert usage(server) == offset + GRANULARITY
        q = upload_command(http, url, "query")
        assert (q.status_code, q.headers["x-goog-upload-status"]) == (200, "active")
        assert q.headers["x-goog-upload-size-received"] == str(offset + GRANULARITY)
    r = send_chunk(http, url, 2 * GRANULARITY, data[2 * GRANULARITY :], finalize=True)
    assert r.status_code == 200, r.text
    f = r.json()["file"]
    assert f["sizeBytes"] == str(len(data))
    assert hex_of(f) == hashlib.sha256(data).hexdigest()
    assert usage(server) == len(data)  # now as a File, not a reservation
    q = upload_command(http, url, "query")
    assert (q.headers["x-goog-upload-status"], q.json()["file"]) == ("final", f)


def test_bare_finalize_takes_what_arrived(http: httpx.Client) -> None:
    url = unsized_url(http)
    assert send_chunk(http, url, 0, b"abc").status_code == 200
    r = upload_command(http, url, "finalize")
    assert r.status_code == 200, r.text
    assert r.json()["file"]["sizeBytes"] == "3"


def test_lost_answers_are_resent(http: httpx.Client) -> None:
    data = os.urandom(30)
    url = unsized_url(http)
    for _ in range(2):  # the answer to the first chunk was lost: the same chunk again
        r = send_chunk(http, url, 0, data[:20])
        assert (r.status_code, r.headers["x-goog-upload-size-received"]) == (200, "20")
    final = send_chunk(http, url, 20, data[20:], finalize=True)
    assert final.status_code == 200, final.text
    again = send_chunk(http, url, 20, data[20:], finalize=True)
    assert (again.status_code, again.headers["x-goog-upload-status"]) == (200, "final")
    assert again.json() == final.json()
    assert final.json()["file"]["sizeBytes"] == "30"
    assert len(files_of(http)) == 1  # nothing made twice
    other = send_chunk(http, url, 30, b"more", finalize=True)
    assert (other.status_code, other.headers["x-goog-upload-status"]) == (400, "final")


def test_cancel_releases_what_was_received(server, http: httpx.Client) -> None:
    url = unsized_url(http)
    assert send_chunk(http, url, 0, b"x" * 500).status_code == 200
    assert usage(server) == 500
    c = upload_command(http, url, "cancel")
    assert (c.status_code, c.headers["x-goog-upload-status"]) == (200, "cancelled")
    assert usage(server) == 0
    assert upload_command(http, url, "query").status_code == 404


def test_offset_mismatch_still_terminal(http: httpx.Client) -> None:
    url = unsized_url(http)
    assert send_chunk(http, url, 0, b"12345").status_code == 200
    r = send_chunk(http, url, 3, b"45678")
    assert (r.status_code, r.headers["x-goog-upload-status"]) == (400, "final")
    assert upload_command(http, url, "query").status_code == 404


# --- limits as the bytes arrive ---------------------------------------------------------------


def _assert_too_large(r: httpx.Response, size: int, limit: int) -> None:
    assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
    e = r.json()["error"]
    assert e["status"] == "INVALID_ARGUMENT"
    assert e["message"] == (
        f"File size {size} bytes exceeds the maximum allowed size of {limit} bytes."
    )
    assert e["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "FILE_TOO_LARGE",
            "domain": "generativelanguage.googleapis.com",
            "metadata": {"sizeBytes": str(size), "maxSizeBytes": str(limit)},
        }
    ]


def _assert_quota(r: httpx.Response) -> None:
    assert r.status_code == 429 and r.headers["x-goog-upload-status"] == "final"
    e = r.json()["error"]
    assert e["status"] == "RESOURCE_EXHAUSTED"
    assert e["message"] == (
        "Quota exceeded for metric: generativelanguage.googleapis.com/file_storage_bytes, "
        "limit: 1000"
    )
    assert e["details"] == QUOTA_FAILURE_1000


def test_over_max_file_size(server_factory) -> None:
    srv = server_factory(args=["--max-file-size", "1000"])
    with srv.http() as http:
        url = unsized_url(http)
        assert send_chunk(http, url, 0, b"x" * 600).status_code == 200
        r = send_chunk(http, url, 600, b"x" * 401, finalize=True)
        _assert_too_large(r, 1001, 1000)
        assert upload_command(http, url, "query").status_code == 404  # the session ended
        assert files_of(http) == [] and usage(srv) == 0
        # Exactly the limit is fine.
        url = unsized_url(http)
        r = send_chunk(http, url, 0, b"x" * 1000, finalize=True)
        assert r.status_code == 200 and r.json()["file"]["sizeBytes"] == "1000"


def send_unannounced(http, url: str):
    """1400 bytes at offset 0 in a chunked request, which does not say its size."""
    r = http.post(
        url,
        headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"},
        content=iter([b"x" * 700, b"x" * 700]),
    )
    assert "content-length" not in r.request.headers
    return r


def test_over_max_file_size_without_content_length(server_factory) -> None:
    """A chunked request does not say its size: the limit stops it as the bytes arrive."""
    srv = server_factory(args=["--max-file-size", "1000"])
    with srv.http() as http:
        url = unsized_url(http)
        r = send_unannounced(http, url)
        _assert_too_large(r, 1400, 1000)
        assert upload_command(http, url, "query").status_code == 404
        assert usage(srv) == 0


def test_over_quota(server_factory) -> None:
    srv = server_factory(args=["--project-quota", "1000"])
    with srv.http() as http:
        sized = http.post(
            "/upload/v1beta/files",
            headers={
                "x-goog-api-key": KEY_A,
                **START,
                "X-Goog-Upload-Header-Content-Length": "300",
            },
        )
        assert sized.status_code == 200  # reserves 300
        url = unsized_url(http)
        assert send_chunk(http, url, 0, b"x" * 600).status_code == 200
        assert usage(srv) == 900
        r = send_chunk(http, url, 600, b"x" * 101)
        _assert_quota(r)
        assert upload_command(http, url, "query").status_code == 404
        assert usage(srv) == 300  # its 600 bytes went with it
        # The quota is per project.
        url_b = unsized_url(http, KEY_B)
        assert send_chunk(http, url_b, 0, b"x" * 1000, finalize=True).status_code == 200
        # Exactly up to the quota is fine.
        url = unsized_url(http)
        assert send_chunk(http, url, 0, b"x" * 700, finalize=True).status_code == 200
        # The start is checked with size 0, as a sized start of 0 bytes is: a project exactly
        # at its quota may still make an empty File, and refuses the first byte.
        url = unsized_url(http)
        _assert_quota(send_chunk(http, url, 0, b"x"))


def test_start_over_quota_is_refused(tmp_path: Path) -> None:
    """A project already over its quota (a restart with a smaller one) refuses the start."""
    st = Store(tmp_path / "d")
    st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=600)
    st.close()
    st = Store(tmp_path / "d", limits=Limits(project_quota=500))
    try:
        with pytest.raises(store_mod.QuotaExceeded):
            st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=None)
    finally:
        st.close()


def test_over_quota_without_content_length(server_factory) -> None:
    srv = server_factory(args=["--project-quota", "1000"])
    with srv.http() as http:
        url = unsized_url(http)
        r = send_unannounced(http, url)
        _assert_quota(r)
        assert usage(srv) == 0


def test_quota_is_checked_before_the_bytes_are_written(tmp_path: Path) -> None:
    """With the chunk's length known, a chunk that cannot fit is refused before any writing."""
    st = Store(tmp_path / "d", limits=Limits(project_quota=1000, max_file_size=800))
    try:
        st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=500)
        _, s = st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=None)
        with pytest.raises(store_mod.QuotaExceeded):
            st.begin_chunk(s, 501)
        with pytest.raises(store_mod.FileTooLarge) as too_large:
            st.begin_chunk(s, 801)
        assert (too_large.value.size, too_large.value.limit) == (801, 800)
        assert not (tmp_path / "d" / "uploads" / s.key).exists()
        w = st.begin_chunk(s, 500)  # exactly fills the quota
        w.write(b"x" * 500)
        assert w.commit(0).received == 500 and st.usage("p") == 1000
    finally:
        st.close()


def test_concurrent_sessions_cannot_overshoot_the_quota(tmp_path: Path) -> None:
    """Two sessions of unknown size each start a chunk that fits the quota alone; the commit
    that would make the project overshoot is refused."""
    st = Store(tmp_path / "d", limits=Limits(project_quota=1000))
    try:
        _, s1 = st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=None)
        _, s2 = st.start_upload("p", name=None, display_name=None, mime_type="a/b", size=None)
        w1, w2 = st.begin_chunk(s1), st.begin_chunk(s2)
        w1.write(b"x" * 600)
        w2.write(b"x" * 600)
        s1 = w1.commit(0)
        with pytest.raises(store_mod.QuotaExceeded):
            w2.commit(0)
        assert st.usage("p") == 600
        assert st.finalize_upload(s1).size_bytes == 600
    finally:
        st.close()


def test_finalize_rechecks_lowered_limits(tmp_path: Path) -> None:
    """A restart with a smaller quota: the received bytes are over it, so finalize refuses."""
    _, s = (st := Store(tmp_path / "d")).start_upload(
        "p", name=None, display_name=None, mime_type="a/b", size=None
    )
    w = st.begin_chunk(s)
    w.write(b"x" * 600)
    s = w.commit(0)
    st.close()
    st = Store(tmp_path / "d", limits=Limits(project_quota=500))
    try:
        with pytest.raises(store_mod.QuotaExceeded):
            st.finalize_upload(s)
        assert st.list_files("p", 10) == ([], False)
        assert os.listdir(tmp_path / "d" / "blobs") == []
    finally:
        st.close()


# --- --require-upload-size ----------------------------------------------------------------------


def test_require_upload_size(server_factory) -> None:
    srv = server_factory(args=["--require-upload-size"])
    with srv.http() as http:
        r = start_unsized(http)
        e = r.json()["error"]
        assert (r.status_code, e["status"]) == (400, "INVALID_ARGUMENT")
        assert e["message"] == (
            "Missing upload size: set X-Goog-Upload-Header-Content-Length or file.sizeBytes."
        )
        # A sized upload works as ever, by header or by body.
        sized = http.post(
            "/upload/v1beta/files",
            headers={"x-goog-api-key": KEY_A, **START},
            json={"file": {"size_bytes": 5}},
        )
        assert sized.status_code == 200, sized.text
        url = sized.headers["x-goog-upload-url"]
        r = send_chunk(http, url, 0, b"hello", finalize=True)
        assert r.status_code == 200 and r.json()["file"]["sizeBytes"] == "5"


# --- the real SDK sees an ordinary File ------------------------------------------------------


def test_sdk_lists_and_gets_an_unsized_upload(server, http: httpx.Client) -> None:
    data = os.urandom(GRANULARITY + 7)
    url = unsized_url(http)
    assert send_chunk(http, url, 0, data[:GRANULARITY]).status_code == 200
    made = send_chunk(http, url, GRANULARITY, data[GRANULARITY:], finalize=True).json()["file"]
    client = server.client(KEY_A)
    got = client.files.get(name=made["name"])
    assert (got.name, got.size_bytes, got.state.name) == (made["name"], len(data), "ACTIVE")
    assert base64.b64decode(got.sha256_hash).decode() == hashlib.sha256(data).hexdigest()
    assert got.display_name == "unsized" and got.mime_type == "application/octet-stream"
    listed = [f for f in client.files.list() if f.name == made["name"]]
    assert len(listed) == 1 and listed[0].size_bytes == len(data)
    client.files.delete(name=made["name"])
    assert files_of(http) == []
