"""The server through the real google-genai SDK: uploads of every shape, get, list, delete,
download, expiry, processing, isolation between keys, and concurrency."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.genai import errors, types

from tests.conftest import KEY_A, KEY_B
from tests.helpers import ServerProcess, wait_for
from tests.server import rawhttp

ID_RE = re.compile(r"files/[a-z0-9]{12}")
MIB = 1024 * 1024


def hex_of(file: types.File) -> str:
    """The hex digest a File's sha256Hash stands for (base64 of the hex string)."""
    return base64.b64decode(file.sha256_hash).decode("ascii")


def all_pages(pager) -> list[list[str]]:
    """The File names of every page of an SDK pager, fetching pages one by one."""
    pages = [[f.name for f in pager.page]]
    while pager.config.get("page_token"):
        pages.append([f.name for f in pager.next_page()])
    return pages


def assert_not_found(exc_info: pytest.ExceptionInfo, file_id: str) -> None:
    err = exc_info.value
    assert isinstance(err, errors.ClientError)
    assert (err.code, err.status) == (403, "PERMISSION_DENIED")
    assert err.message == (
        f"You do not have permission to access the File {file_id} or it may not exist."
    )


# --- uploads ---------------------------------------------------------------------------------


def test_upload_by_path(server: ServerProcess, client_a, tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world\n")
    f = client_a.files.upload(file=path, config={"display_name": "Hello"})
    assert ID_RE.fullmatch(f.name)
    assert f.display_name == "Hello"
    assert f.mime_type == "text/plain"  # guessed by the SDK, stored verbatim
    assert f.size_bytes == 12
    assert hex_of(f) == hashlib.sha256(b"hello world\n").hexdigest()
    assert f.state == types.FileState.ACTIVE
    assert f.source == types.FileSource.UPLOADED
    assert f.uri == "https://generativelanguage.googleapis.com/v1beta/" + f.name
    assert f.download_uri is None
    assert f.update_time == f.create_time
    assert f.expiration_time - f.create_time == dt.timedelta(hours=48)
    assert abs(f.create_time - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)


def test_upload_streams(client_a, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    from_bytes = client_a.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/x-custom"}
    )
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        from_file = client_a.files.upload(file=fh, config={"mime_type": "jsonl"})
    for f, mime in ((from_bytes, "application/x-custom"), (from_file, "jsonl")):
        assert f.size_bytes == len(data)
        assert f.mime_type == mime
        assert hex_of(f) == hashlib.sha256(data).hexdigest()
        assert f.display_name is None  # not derived from anything the client did not set
    assert from_bytes.name != from_file.name


def test_upload_zero_bytes(client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b""), config={"mime_type": "text/plain"})
    assert f.size_bytes is None  # proto3 JSON omits the 0
    assert hex_of(f) == hashlib.sha256(b"").hexdigest()
    assert client_a.files.get(name=f.name).size_bytes is None


def test_upload_multi_chunk(server: ServerProcess, client_a) -> None:
    data = random.Random(7).randbytes(17 * MIB + 5)
    server.admin.reset_stats()
    f = client_a.files.upload(file=io.BytesIO(data), config={"mime_type": "video/webm"})
    assert f.size_bytes == len(data)
    assert hex_of(f) == hashlib.sha256(data).hexdigest()
    stats = server.admin.stats()
    assert (stats["upload_start"], stats["upload_chunk"], stats["upload_finalize"]) == (1, 2, 1)


def test_upload_exact_multiple_of_chunk_size(server: ServerProcess, client_a) -> None:
    data = random.Random(8).randbytes(16 * MIB)
    server.admin.reset_stats()
    f = client_a.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain"})
    assert hex_of(f) == hashlib.sha256(data).hexdigest()
    assert (server.admin.stats()["upload_chunk"], server.admin.stats()["upload_finalize"]) == (1, 1)


def test_non_ascii_display_name(client_a) -> None:
    name = "Résumé 📄 日本語 — ü"
    f = client_a.files.upload(
        file=io.BytesIO(b"x"), config={"mime_type": "text/plain", "display_name": name}
    )
    assert f.display_name == name
    assert client_a.files.get(name=f.name).display_name == name
    assert [g.display_name for g in client_a.files.list()] == [name]


def test_user_chosen_name_and_duplicates(client_a, client_b) -> None:
    cfg = {"mime_type": "text/plain", "name": "my-file-1"}
    f = client_a.files.upload(file=io.BytesIO(b"one"), config=cfg)
    assert f.name == "files/my-file-1"
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.upload(file=io.BytesIO(b"two"), config=cfg)
    assert (exc_info.value.code, exc_info.value.status) == (409, "ALREADY_EXISTS")
    assert exc_info.value.message == "Requested entity already exists"
    # Names are per project: another key may use the same one.
    assert client_b.files.upload(file=io.BytesIO(b"b"), config=cfg).name == "files/my-file-1"
    # After a delete the name is free again.
    client_a.files.delete(name="my-file-1")
    assert client_a.files.upload(file=io.BytesIO(b"3"), config=cfg).size_bytes == 1


@pytest.mark.parametrize("bad", ["Upper", "-dash", "dash-", "a" * 41, "under_score", "a/b"])
def test_invalid_user_name(client_a, bad: str) -> None:
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.upload(
            file=io.BytesIO(b"x"), config={"mime_type": "text/plain", "name": bad}
        )
    assert (exc_info.value.code, exc_info.value.status) == (400, "INVALID_ARGUMENT")
    assert "Invalid file name" in exc_info.value.message
    assert list(client_a.files.list()) == []


def test_display_name_limit(client_a) -> None:
    ok = client_a.files.upload(
        file=io.BytesIO(b"x"), config={"mime_type": "text/plain", "display_name": "é" * 512}
    )
    assert len(ok.display_name) == 512
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.upload(
            file=io.BytesIO(b"x"), config={"mime_type": "text/plain", "display_name": "a" * 513}
        )
    assert (exc_info.value.code, exc_info.value.status) == (400, "INVALID_ARGUMENT")
    assert exc_info.value.message == "Display name must be at most 512 characters."


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_async_client(server_process: ServerProcess, transport: str) -> None:
    """The SDK's async client over each transport it has: upload (several chunks), get, list
    (paged), download, delete. A real server: the transports make their own connections."""
    server = server_process
    if transport == "aiohttp":
        pytest.importorskip("aiohttp", reason="the SDK's aiohttp transport needs aiohttp")
        options: dict = {}  # with aiohttp installed, the SDK's async client uses it by default
    else:
        import httpx2

        options = {"async_client_args": {"transport": httpx2.AsyncHTTPTransport()}}
    client = server.client(KEY_A, **options)
    assert client._api_client._use_aiohttp() is (transport == "aiohttp")
    data = os.urandom(8 * MIB + 3)
    generated = server.admin.generated(KEY_A, b"made by a model")

    async def scenario() -> None:
        aio = client.aio
        try:
            up = await aio.files.upload(
                file=io.BytesIO(data), config={"mime_type": "text/plain", "display_name": "a"}
            )
            assert up.size_bytes == len(data)
            assert base64.b64decode(up.sha256_hash).decode() == hashlib.sha256(data).hexdigest()
            got = await aio.files.get(name=up.name)
            assert (got.name, got.display_name, got.state) == (up.name, "a", types.FileState.ACTIVE)
            names = [f.name async for f in await aio.files.list(config={"page_size": 1})]
            assert names == [up.name, generated["name"]]
            assert await aio.files.download(file=generated["name"]) == b"made by a model"
            await aio.files.delete(name=up.name)
            with pytest.raises(errors.ClientError) as exc_info:
                await aio.files.get(name=up.name)
            assert exc_info.value.code == 403
        finally:
            await aio.aclose()

    server.admin.reset_stats()
    asyncio.run(scenario())
    stats = server.admin.stats()
    assert (stats["upload_start"], stats["upload_chunk"], stats["upload_finalize"]) == (1, 1, 1)
    assert (stats["list"], stats["delete"], stats["download"]) == (2, 1, 1)


# --- get, list, delete -------------------------------------------------------------------------


def test_list_pages_newest_first(server: ServerProcess, client_a) -> None:
    uploaded = [
        client_a.files.upload(
            file=io.BytesIO(b"%d" % i), config={"mime_type": "text/plain", "display_name": f"f{i}"}
        ).name
        for i in range(25)
    ]
    server.admin.reset_stats()
    pages = all_pages(client_a.files.list(config={"page_size": 10}))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sum(pages, []) == uploaded[::-1]
    assert server.admin.stats()["list"] == 3
    # Iterating the pager walks the same Files; the default page size is 10.
    server.admin.reset_stats()
    assert [f.name for f in client_a.files.list()] == uploaded[::-1]
    assert server.admin.stats()["list"] == 3


def test_list_survives_changes_between_pages(client_a) -> None:
    names = [
        client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"}).name
        for _ in range(6)
    ]
    pager = client_a.files.list(config={"page_size": 2})
    seen = [f.name for f in pager.page]
    assert seen == names[:-3:-1]
    # A new File (newer than everything) and a deleted not-yet-seen File between pages.
    client_a.files.upload(file=io.BytesIO(b"new"), config={"mime_type": "text/plain"})
    client_a.files.delete(name=names[1])
    while pager.config.get("page_token"):
        seen += [f.name for f in pager.next_page()]
    assert seen == [names[5], names[4], names[3], names[2], names[0]]


def test_get_and_delete(client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"bye"), config={"mime_type": "text/plain"})
    got = client_a.files.get(name=f.name)
    assert got == f
    assert client_a.files.get(name=f.uri).name == f.name  # the SDK accepts the https uri
    client_a.files.delete(name=f.name)
    file_id = f.name.removeprefix("files/")
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.get(name=f.name)
    assert_not_found(exc_info, file_id)
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.delete(name=f.name)
    assert_not_found(exc_info, file_id)
    assert list(client_a.files.list()) == []


def test_unknown_file_errors(client_a) -> None:
    for call in (client_a.files.get, client_a.files.delete):
        with pytest.raises(errors.ClientError) as exc_info:
            call(name="files/doesnotexist")
        assert_not_found(exc_info, "doesnotexist")
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.download(file="files/doesnotexist")
    assert_not_found(exc_info, "doesnotexist")


def test_invalid_api_key(server: ServerProcess) -> None:
    stranger = server.client("not-a-key")  # keep a reference: Client.__del__ closes its transport
    with pytest.raises(errors.ClientError) as exc_info:
        stranger.files.list()
    err = exc_info.value
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")
    assert err.message == "API key not valid. Please pass a valid API key."
    details = err.details["error"]["details"]
    assert details[0]["reason"] == "API_KEY_INVALID"
    assert details[0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert details[1]["@type"] == "type.googleapis.com/google.rpc.LocalizedMessage"
    with pytest.raises(errors.ClientError) as exc_info:
        stranger.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    assert exc_info.value.code == 400


# --- download ----------------------------------------------------------------------------------


def test_download_generated(server: ServerProcess, client_a, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 17)
    made = server.admin.generated(KEY_A, data, display_name="out.mp4", mime_type="video/mp4")
    assert made["source"] == "GENERATED"
    assert made["downloadUri"] == made["uri"] + ":download?alt=media"
    f = client_a.files.get(name=made["name"])
    assert f.source == types.FileSource.GENERATED
    assert f.download_uri == made["downloadUri"]
    assert client_a.files.download(file=f) == data
    client_a.files.download(file=f, destination=tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    video = types.Video(uri=f.download_uri)
    assert client_a.files.download(file=video) == data and video.video_bytes == data


def test_download_uploaded_refused(client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"mine"), config={"mime_type": "text/plain"})
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.download(file=f.name)  # a name string gets past the SDK's own check
    err = exc_info.value
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")
    assert err.message == "Only generated files can be downloaded."


# --- limits ------------------------------------------------------------------------------------


def test_file_too_large(server_factory) -> None:
    srv = server_factory(args=["--max-file-size", "1000"])
    client = srv.client(KEY_A)
    assert client.files.upload(file=io.BytesIO(b"x" * 1000), config={"mime_type": "text/plain"})
    srv.admin.reset_stats()
    with pytest.raises(errors.ClientError) as exc_info:
        client.files.upload(file=io.BytesIO(b"x" * 1001), config={"mime_type": "text/plain"})
    err = exc_info.value
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")
    assert err.message == "File size 1001 bytes exceeds the maximum allowed size of 1000 bytes."
    info = err.details["error"]["details"][0]
    assert info["reason"] == "FILE_TOO_LARGE"
    assert info["domain"] == "generativelanguage.googleapis.com"
    assert info["metadata"] == {"sizeBytes": "1001", "maxSizeBytes": "1000"}
    stats = srv.admin.stats()
    assert (stats["upload_start"], stats["upload_chunk"], stats["upload_finalize"]) == (1, 0, 0)


def test_project_quota_counts_files_and_open_sessions(server_factory) -> None:
    srv = server_factory(args=["--project-quota", "1000"])
    client = srv.client(KEY_A)
    client.files.upload(file=io.BytesIO(b"x" * 400), config={"mime_type": "text/plain"})
    with srv.http() as http:
        # An open session reserves its declared size.
        upload_url = rawhttp.start_upload(http, KEY_A, 500)
        with pytest.raises(errors.ClientError) as exc_info:
            client.files.upload(file=io.BytesIO(b"x" * 101), config={"mime_type": "text/plain"})
        err = exc_info.value
        assert (err.code, err.status) == (429, "RESOURCE_EXHAUSTED")
        # §12: the real service's shape, which is what tells it from a rate limit.
        assert err.message == (
            "Quota exceeded for metric: generativelanguage.googleapis.com/file_storage_bytes, "
            "limit: 1000"
        )
        assert err.details["error"]["details"] == [
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
        # The quota is per project.
        client_b = srv.client(KEY_B)
        client_b.files.upload(file=io.BytesIO(b"x" * 1000), config={"mime_type": "text/plain"})
        # Cancelling the session releases its reservation.
        assert rawhttp.upload_command(http, upload_url, "cancel").status_code == 200
    client.files.upload(file=io.BytesIO(b"x" * 600), config={"mime_type": "text/plain"})
    # Deleting a File frees its bytes.
    with pytest.raises(errors.ClientError):
        client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    for f in client.files.list():
        client.files.delete(name=f.name)
    client.files.upload(file=io.BytesIO(b"x" * 1000), config={"mime_type": "text/plain"})


# --- time: expiry and processing ---------------------------------------------------------------


def test_expiry_by_clock(server: ServerProcess, client_a) -> None:
    made = server.admin.generated(KEY_A, b"gen")
    f = client_a.files.upload(file=io.BytesIO(b"old"), config={"mime_type": "text/plain"})
    blobs = server.data_dir / "blobs"
    assert len(list(blobs.iterdir())) == 2
    server.admin.advance_clock(48 * 3600 - 10)
    assert client_a.files.get(name=f.name).name == f.name
    server.admin.advance_clock(11)
    for name in (f.name, made["name"]):
        with pytest.raises(errors.ClientError) as exc_info:
            client_a.files.get(name=name)
        assert_not_found(exc_info, name.removeprefix("files/"))
    assert list(client_a.files.list()) == []
    assert list(blobs.iterdir()) == []  # swept
    fresh = client_a.files.upload(file=io.BytesIO(b"new"), config={"mime_type": "text/plain"})
    assert fresh.create_time > f.expiration_time


def test_expiry_in_real_time(server_factory) -> None:
    srv = server_factory(args=["--file-ttl", "0.5"])
    client = srv.client(KEY_A)
    f = client.files.upload(file=io.BytesIO(b"short"), config={"mime_type": "text/plain"})
    assert f.expiration_time - f.create_time == dt.timedelta(milliseconds=500)

    def gone() -> bool:
        try:
            client.files.get(name=f.name)
        except errors.ClientError as exc:
            return exc.code == 403
        return False

    wait_for(gone, timeout=10, what="the File to expire")
    assert list(client.files.list()) == []


def test_video_processing_by_clock(server: ServerProcess, client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"\0" * 100), config={"mime_type": "video/mp4"})
    assert f.state == types.FileState.PROCESSING
    assert client_a.files.get(name=f.name).state == types.FileState.PROCESSING
    other = client_a.files.upload(file=io.BytesIO(b"a"), config={"mime_type": "audio/mpeg"})
    assert other.state == types.FileState.ACTIVE
    server.admin.advance_clock(2.5)
    done = client_a.files.get(name=f.name)
    assert done.state == types.FileState.ACTIVE
    assert done.update_time - done.create_time == dt.timedelta(seconds=2)


def test_processing_time_by_class(server_factory) -> None:
    srv = server_factory(args=["--processing-seconds", "video=100,audio=50,pdf=20"])
    client = srv.client(KEY_A)
    uploaded = {
        mime: client.files.upload(file=io.BytesIO(b"m"), config={"mime_type": mime})
        for mime in ("video/mp4", "audio/mpeg", "application/pdf", "text/plain")
    }

    def states() -> dict[str, types.FileState]:
        return {mime: client.files.get(name=f.name).state for mime, f in uploaded.items()}

    P, A = types.FileState.PROCESSING, types.FileState.ACTIVE
    assert [f.state for f in uploaded.values()] == [P, P, P, A]
    for seconds, expected in ((20.5, [P, P, A, A]), (30, [P, A, A, A]), (50, [A, A, A, A])):
        srv.admin.advance_clock(seconds)
        assert list(states().values()) == expected
    for mime, seconds in (("video/mp4", 100), ("audio/mpeg", 50), ("application/pdf", 20)):
        done = client.files.get(name=uploaded[mime].name)
        assert done.update_time - done.create_time == dt.timedelta(seconds=seconds), mime


def test_a_file_made_to_fail(server_factory) -> None:
    srv = server_factory(args=["--processing-seconds", "video=60"])
    client = srv.client(KEY_A)
    video = client.files.upload(file=io.BytesIO(b"v"), config={"mime_type": "video/mp4"})
    assert video.state == types.FileState.PROCESSING
    answer = srv.admin.fail(KEY_A, video.name, code=3, message="Unsupported video codec.")
    assert (answer["state"], answer["error"]) == (
        "FAILED",
        {"code": 3, "message": "Unsupported video codec."},
    )
    assert list(answer)[-3:] == ["state", "source", "error"]  # the proto's field order
    failed = client.files.get(name=video.name)
    assert failed.state == types.FileState.FAILED
    assert (failed.error.code, failed.error.message) == (3, "Unsupported video codec.")
    srv.admin.advance_clock(120)  # processing time passing changes nothing
    assert [(f.name, f.state) for f in client.files.list()] == [
        (video.name, types.FileState.FAILED)
    ]
    # An ACTIVE File can be made to fail too; the default error is INTERNAL.
    text = client.files.upload(file=io.BytesIO(b"t"), config={"mime_type": "text/plain"})
    answer = srv.admin.fail(KEY_A, text.name)
    assert answer["error"] == {"code": 13, "message": "The file could not be processed."}
    assert answer["updateTime"] > answer["createTime"]
    with srv.http() as http:
        for body, status in (
            ({"name": "files/nothere"}, 403),
            ({"name": text.name}, 403),  # another project's key below
            ({"name": video.name, "code": 0}, 400),
            ({"name": video.name, "message": ""}, 400),
            ({}, 400),
        ):
            key = KEY_B if body.get("name") == text.name else KEY_A
            r = http.post("/_gemfs/admin/fail", json=body, headers={"x-goog-api-key": key})
            assert r.status_code == status, body
    assert client.files.get(name=text.name).state == types.FileState.FAILED


def test_video_processing_in_real_time(server_factory) -> None:
    srv = server_factory(args=["--video-processing-seconds", "0.3"])
    client = srv.client(KEY_A)
    f = client.files.upload(file=io.BytesIO(b"v"), config={"mime_type": "video/webm"})
    assert f.state == types.FileState.PROCESSING
    done = wait_for(
        lambda: (g := client.files.get(name=f.name)).state == types.FileState.ACTIVE and g,
        timeout=10,
        what="processing to finish",
    )
    assert done.update_time > done.create_time


# --- isolation ---------------------------------------------------------------------------------


def test_projects_are_isolated(server: ServerProcess, client_a, client_b) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"secret"), config={"mime_type": "text/plain"})
    made = server.admin.generated(KEY_A, b"gen")
    file_id = f.name.removeprefix("files/")
    with pytest.raises(errors.ClientError) as exc_info:
        client_b.files.get(name=f.name)
    assert_not_found(exc_info, file_id)
    with pytest.raises(errors.ClientError) as exc_info:
        client_b.files.delete(name=f.name)
    assert_not_found(exc_info, file_id)
    with pytest.raises(errors.ClientError) as exc_info:
        client_b.files.download(file=made["name"])
    assert exc_info.value.code == 403
    assert list(client_b.files.list()) == []
    assert client_a.files.get(name=f.name).name == f.name


def test_altered_upload_id_is_refused(server: ServerProcess) -> None:
    with server.http() as http:
        url = rawhttp.start_upload(http, KEY_A, 4)
        token = re.search(r"upload_id=([^&]+)", url).group(1)
        assert len(token) >= 64
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in (
            url.replace(token, flipped),
            url.replace(token, token[:-4]),
            url.split("?")[0] + "?upload_id=guess",
        ):
            r = rawhttp.send_chunk(http, bad, 0, b"data", finalize=True)
            assert r.status_code == 404
            assert r.headers["x-goog-upload-status"] == "final"
            assert r.json()["error"] == {
                "code": 404,
                "message": "The upload session does not exist or has expired.",
                "status": "NOT_FOUND",
            }
        # The real URL still works: nothing was written to it.
        r = rawhttp.send_chunk(http, url, 0, b"data", finalize=True)
        assert r.status_code == 200 and r.json()["file"]["sizeBytes"] == "4"


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_uploads(server: ServerProcess) -> None:
    rng = random.Random(1)
    sizes = [rng.choice([0, 1, 1000, 300_000, 2 * MIB, 9 * MIB]) for _ in range(32)]
    payloads = [rng.randbytes(n) for n in sizes]

    def upload(i: int) -> tuple[int, types.File]:
        client = server.client(KEY_A if i % 2 else KEY_B)
        f = client.files.upload(
            file=io.BytesIO(payloads[i]),
            config={"mime_type": "application/octet-stream", "display_name": f"c{i}"},
        )
        return i, f

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(upload, range(len(payloads))))
    for i, f in results:
        assert f.display_name == f"c{i}"
        assert f.size_bytes == (sizes[i] or None)
        assert hex_of(f) == hashlib.sha256(payloads[i]).hexdigest()
    for key, parity in ((KEY_A, 1), (KEY_B, 0)):
        client = server.client(key)
        listed = {f.display_name: f for f in client.files.list(config={"page_size": 100})}
        assert set(listed) == {f"c{i}" for i in range(len(payloads)) if i % 2 == parity}
        for name, f in listed.items():
            assert hex_of(f) == hashlib.sha256(payloads[int(name[1:])]).hexdigest()
