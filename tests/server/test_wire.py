"""Wire details the SDK does not check but the real API has: header names and their case,
status codes, JSON shapes, the resumable protocol's commands and errors, list paging rules,
authentication variants, and the API-version aliases."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B
from tests.helpers import ServerProcess
from tests.server.rawhttp import raw_request, send_chunk, start_upload, upload_command

TS6 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
TS9 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
START_HEADERS = {
    "x-goog-api-key": KEY_A,
    "X-Goog-Upload-Protocol": "resumable",
    "X-Goog-Upload-Command": "start",
    "X-Goog-Upload-Header-Content-Length": "5",
    "X-Goog-Upload-Header-Content-Type": "text/plain",
    "Content-Type": "application/json",
}
NOT_FOUND_MSG = "You do not have permission to access the File {} or it may not exist."


def upload(http: httpx.Client, data: bytes, key: str = KEY_A, **file: object) -> dict:
    url = start_upload(http, key, len(data), str(file.pop("mime_type", "text/plain")), file=file)
    r = send_chunk(http, url, 0, data, finalize=True)
    assert r.status_code == 200, r.text
    return r.json()["file"]


def error_of(r: httpx.Response) -> tuple[int, str, str]:
    e = r.json()["error"]
    assert e["code"] == r.status_code
    return r.status_code, e["status"], e["message"]


@pytest.fixture
def http(server: ServerProcess):
    with server.http() as client:
        yield client


# --- header names, on the raw socket ----------------------------------------------------------


def test_start_response_headers_exact_case(server_process: ServerProcess) -> None:
    server = server_process  # the bytes on a real socket
    r = raw_request(server.url, "POST", "/upload/v1beta/files", START_HEADERS, b'{"file": {}}')
    assert r.status == 200
    assert r.body == b""
    names = [k for k, _ in r.headers]
    for name in (
        "X-Goog-Upload-URL",
        "X-Goog-Upload-Status",
        "X-Goog-Upload-Control-URL",
        "X-Goog-Upload-Chunk-Granularity",
    ):
        assert name in names, r.head
    assert b"\r\nX-Goog-Upload-URL: http://" in r.head
    assert b"X-Goog-Upload-Url" not in r.head
    assert r.header("X-Goog-Upload-Status") == "active"
    assert r.header("X-Goog-Upload-Chunk-Granularity") == "8388608"
    assert r.header("Content-Length") == "0"
    url = r.header("X-Goog-Upload-URL")
    assert url == r.header("X-Goog-Upload-Control-URL")
    assert url.startswith(f"{server.url}/upload/v1beta/files?upload_id=")
    assert url.endswith("&upload_protocol=resumable")
    assert re.search(r"upload_id=[A-Za-z0-9_-]{64,}&", url)

    # The final answer: status header and JSON content type in their exact case.
    target = url.removeprefix(server.url)
    chunk = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
    r = raw_request(server.url, "POST", target, chunk, b"hello")
    assert r.status == 200
    assert b"\r\nX-Goog-Upload-Status: final\r\n" in r.head
    assert b"\r\nContent-Type: application/json; charset=UTF-8\r\n" in r.head
    assert json.loads(r.body)["file"]["sizeBytes"] == "5"


def test_error_response_raw(server_process: ServerProcess) -> None:
    server = server_process
    r = raw_request(server.url, "GET", "/v1beta/files/nope", {"x-goog-api-key": KEY_A})
    assert r.status == 403
    assert r.header("Content-Type") == "application/json; charset=UTF-8"
    assert json.loads(r.body) == {
        "error": {
            "code": 403,
            "message": NOT_FOUND_MSG.format("nope"),
            "status": "PERMISSION_DENIED",
        }
    }


# --- the File resource --------------------------------------------------------------------------


def test_file_json_shape(http: httpx.Client) -> None:
    data = b"hello"
    f = upload(http, data)
    assert list(f) == [
        "name",
        "mimeType",
        "sizeBytes",
        "createTime",
        "updateTime",
        "expirationTime",
        "sha256Hash",
        "uri",
        "state",
        "source",
    ]
    assert re.fullmatch(r"files/[a-z0-9]{12}", f["name"])
    assert f["sizeBytes"] == "5" and isinstance(f["sizeBytes"], str)
    assert TS6.fullmatch(f["createTime"]) and f["updateTime"] == f["createTime"]
    assert TS9.fullmatch(f["expirationTime"])
    assert len(f["sha256Hash"]) == 88
    assert base64.b64decode(f["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
    assert f["uri"] == "https://generativelanguage.googleapis.com/v1beta/" + f["name"]
    assert (f["state"], f["source"], f["mimeType"]) == ("ACTIVE", "UPLOADED", "text/plain")
    got = http.get("/v1beta/" + f["name"], headers={"x-goog-api-key": KEY_A})
    assert got.status_code == 200 and got.json() == f
    assert got.headers["content-type"] == "application/json; charset=UTF-8"


def test_zero_byte_file_has_no_size(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 0, "text/plain")
    r = http.post(
        url, headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
    )
    assert r.status_code == 200
    f = r.json()["file"]
    assert "sizeBytes" not in f and "displayName" not in f
    assert base64.b64decode(f["sha256Hash"]).decode() == hashlib.sha256(b"").hexdigest()


def test_ids_are_distinct(http: httpx.Client) -> None:
    names = {upload(http, b"x")["name"] for _ in range(20)}
    assert len(names) == 20


def test_generated_file_shape(server: ServerProcess, http: httpx.Client) -> None:
    f = server.admin.generated(KEY_A, b"abc", mime_type="image/png")
    assert list(f)[-4:] == ["uri", "downloadUri", "state", "source"]
    assert f["downloadUri"] == f["uri"] + ":download?alt=media"
    file_id = f["name"].removeprefix("files/")
    for path in (f"/v1beta/files/{file_id}:download", f"/download/v1beta/files/{file_id}:download"):
        r = http.get(path, params={"alt": "media"}, headers={"x-goog-api-key": KEY_A})
        assert r.status_code == 200
        assert r.content == b"abc"
        assert r.headers["content-type"] == "image/png"
    r = http.get(f"/v1beta/files/{file_id}:download", params={"alt": "media", "key": KEY_B})
    assert error_of(r) == (403, "PERMISSION_DENIED", NOT_FOUND_MSG.format(file_id))


# --- upload start ------------------------------------------------------------------------------


def test_start_accepts_camel_and_snake_body(http: httpx.Client) -> None:
    for file in (
        {"displayName": "camel", "mimeType": "text/csv", "sizeBytes": "3"},
        {"display_name": "snake", "mime_type": "text/csv", "size_bytes": 3},
    ):
        r = http.post(
            "/upload/v1beta/files",
            headers={
                "x-goog-api-key": KEY_A,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
            },
            json={"file": file},
        )
        assert r.status_code == 200, r.text
        done = send_chunk(http, r.headers["x-goog-upload-url"], 0, b"a,b", finalize=True).json()[
            "file"
        ]
        assert done["mimeType"] == "text/csv"
        assert done["displayName"] in ("camel", "snake")


def test_start_takes_the_rest_docs_single_quoted_body(http: httpx.Client) -> None:
    """§12: the REST docs send `{'file': {'display_name': 'AUDIO'}}` and get a File back."""
    r = http.post(
        "/upload/v1beta/files",
        headers=START_HEADERS,
        content=b"{'file': {'display_name': 'AUDIO'}}",
    )
    assert r.status_code == 200, r.text
    done = send_chunk(http, r.headers["x-goog-upload-url"], 0, b"audio", finalize=True)
    assert done.json()["file"]["displayName"] == "AUDIO"
    # Bare keys and a trailing comma are read too; a lone surrogate and trailing junk are not.
    r = http.post(
        "/upload/v1beta/files", headers=START_HEADERS, content=b"{file: {displayName: 'B',},}"
    )
    assert r.status_code == 200, r.text
    for bad in (b"{'file': {'display_name': '\\ud800'}}", b"{'file': {}} junk", b"{'file': }"):
        r = http.post("/upload/v1beta/files", headers=START_HEADERS, content=bad)
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT"), bad
        assert error_of(r)[2].startswith("Invalid JSON payload received. "), bad


def test_start_prefers_headers_over_body(http: httpx.Client) -> None:
    url = start_upload(
        http, KEY_A, 2, "text/plain", file={"mime_type": "image/png", "size_bytes": 99}
    )
    f = send_chunk(http, url, 0, b"hi", finalize=True).json()["file"]
    assert (f["mimeType"], f["sizeBytes"]) == ("text/plain", "2")


def test_start_validation(http: httpx.Client) -> None:
    base = {
        "x-goog-api-key": KEY_A,
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
    }
    no_mime = http.post(
        "/upload/v1beta/files",
        headers={**base, "X-Goog-Upload-Header-Content-Length": "1"},
        json={},
    )
    assert error_of(no_mime)[:2] == (400, "INVALID_ARGUMENT")
    assert "MIME" in error_of(no_mime)[2]
    no_size = http.post(
        "/upload/v1beta/files",
        headers={**base, "X-Goog-Upload-Header-Content-Type": "a/b"},
        json={},
    )
    # Accepted: the size may stay unknown until finalize (tests/server/test_unsized.py).
    assert no_size.status_code == 200, no_size.text
    bad_size = http.post(
        "/upload/v1beta/files",
        headers={
            **base,
            "X-Goog-Upload-Header-Content-Type": "a/b",
            "X-Goog-Upload-Header-Content-Length": "-1",
        },
    )
    assert error_of(bad_size)[:2] == (400, "INVALID_ARGUMENT")
    not_json = http.post(
        "/upload/v1beta/files",
        headers={
            **base,
            "X-Goog-Upload-Header-Content-Type": "a/b",
            "X-Goog-Upload-Header-Content-Length": "1",
        },
        content=b"{nope",
    )
    assert error_of(not_json)[:2] == (400, "INVALID_ARGUMENT")
    assert error_of(not_json)[2].startswith("Invalid JSON payload received.")
    not_resumable = http.post(
        "/upload/v1beta/files", headers={"x-goog-api-key": KEY_A}, content=b"raw"
    )
    assert error_of(not_resumable)[:2] == (400, "INVALID_ARGUMENT")


def test_upload_url_uses_public_url(server_factory) -> None:
    srv = server_factory(args=["--public-url", "https://files.example.test:9999/"])
    with srv.http() as http:
        url = start_upload(http, KEY_A, 1)
    assert url.startswith("https://files.example.test:9999/upload/v1beta/files?upload_id=")


# --- chunks and commands -----------------------------------------------------------------------


def test_query_and_cancel(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 10)
    r = send_chunk(http, url, 0, b"12345")
    assert r.status_code == 200
    assert r.headers["x-goog-upload-status"] == "active"
    assert r.headers["x-goog-upload-size-received"] == "5"
    q = upload_command(http, url, "query")
    assert q.status_code == 200
    assert (q.headers["x-goog-upload-status"], q.headers["x-goog-upload-size-received"]) == (
        "active",
        "5",
    )
    c = upload_command(http, url, "cancel")
    assert c.status_code == 200 and c.headers["x-goog-upload-status"] == "cancelled"
    after = send_chunk(http, url, 5, b"67890", finalize=True)
    assert after.status_code == 404 and after.headers["x-goog-upload-status"] == "final"
    assert upload_command(http, url, "query").status_code == 404


def test_query_after_final(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 3)
    assert send_chunk(http, url, 0, b"abc", finalize=True).status_code == 200
    q = upload_command(http, url, "query")
    assert (
        q.status_code,
        q.headers["x-goog-upload-status"],
        q.headers["x-goog-upload-size-received"],
    ) == (200, "final", "3")
    # The File rides along, so a client that lost the finalize answer can take it from here.
    assert q.json()["file"]["sizeBytes"] == "3"


def test_offset_mismatch_is_terminal(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 10)
    assert send_chunk(http, url, 0, b"12345").status_code == 200
    r = send_chunk(http, url, 3, b"45678")
    assert error_of(r) == (
        400,
        "INVALID_ARGUMENT",
        "Invalid upload offset 3: the upload session has received 5 bytes.",
    )
    assert r.headers["x-goog-upload-status"] == "final"
    assert upload_command(http, url, "query").status_code == 404  # the session is over


def test_resent_chunk_is_idempotent(http: httpx.Client) -> None:
    data = os.urandom(20)
    url = start_upload(http, KEY_A, len(data))
    for _ in range(3):  # the SDK re-sends the same chunk when the status header was missing
        r = send_chunk(http, url, 0, data[:8])
        assert (r.status_code, r.headers["x-goog-upload-status"]) == (200, "active")
        assert r.headers["x-goog-upload-size-received"] == "8"
    assert send_chunk(http, url, 8, data[8:16]).headers["x-goog-upload-size-received"] == "16"
    final = send_chunk(http, url, 16, data[16:], finalize=True)
    f = final.json()["file"]
    assert base64.b64decode(f["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
    # Re-sending the finalizing chunk returns the same File again.
    again = send_chunk(http, url, 16, data[16:], finalize=True)
    assert (again.status_code, again.headers["x-goog-upload-status"]) == (200, "final")
    assert again.json() == final.json()
    other = send_chunk(http, url, 20, b"more", finalize=True)
    assert error_of(other)[:2] == (400, "INVALID_ARGUMENT")
    assert other.headers["x-goog-upload-status"] == "final"


def test_same_offset_different_length_is_not_a_resend(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 10)
    send_chunk(http, url, 0, b"12345")
    r = send_chunk(http, url, 0, b"1234")
    assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"


def test_bytes_beyond_declared_size(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 4)
    r = send_chunk(http, url, 0, b"12345", finalize=True)
    assert error_of(r) == (400, "INVALID_ARGUMENT", "Upload exceeds the declared size of 4 bytes.")
    assert r.headers["x-goog-upload-status"] == "final"
    assert http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A}).json() == {}


def test_finalize_with_missing_bytes(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 10)
    r = send_chunk(http, url, 0, b"12345", finalize=True)
    code, status, message = error_of(r)
    assert (code, status) == (400, "INVALID_ARGUMENT")
    assert "5 bytes" in message and "10 bytes" in message
    assert r.headers["x-goog-upload-status"] == "final"


def test_bare_finalize_and_bad_commands(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 3)
    assert send_chunk(http, url, 0, b"abc").status_code == 200
    done = upload_command(http, url, "finalize")
    assert done.status_code == 200 and done.json()["file"]["sizeBytes"] == "3"
    url = start_upload(http, KEY_A, 3)
    bad = upload_command(http, url, "explode")
    assert bad.status_code == 400 and bad.headers["x-goog-upload-status"] == "final"
    # Terminal, as the status says: the session (and its quota reservation) is gone.
    assert upload_command(http, url, "query").status_code == 404
    url = start_upload(http, KEY_A, 3)
    no_offset = http.post(url, headers={"X-Goog-Upload-Command": "upload"}, content=b"abc")
    assert no_offset.status_code == 400 and no_offset.headers["x-goog-upload-status"] == "final"
    assert upload_command(http, url, "query").status_code == 404


def test_chunks_need_no_api_key_but_start_does(http: httpx.Client) -> None:
    r = http.post(
        "/upload/v1beta/files",
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
        json={},
    )
    assert error_of(r)[:2] == (403, "PERMISSION_DENIED")
    url = start_upload(http, KEY_A, 2)
    assert "key" not in url.split("?")[1].split("&")[0]
    assert send_chunk(http, url, 0, b"ok", finalize=True).status_code == 200


# --- list --------------------------------------------------------------------------------------


def test_empty_list_is_empty_object(http: httpx.Client) -> None:
    r = http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A})
    assert r.status_code == 200 and r.content == b"{}"


def test_page_size_clamping(server: ServerProcess, http: httpx.Client) -> None:
    server.admin.seed(KEY_A, 120)
    cases = {None: 10, "0": 10, "-5": 10, "1": 1, "10": 10, "100": 100, "101": 100, "1000": 100}
    for raw, expected in cases.items():
        params = {} if raw is None else {"pageSize": raw}
        body = http.get("/v1beta/files", params=params, headers={"x-goog-api-key": KEY_A}).json()
        assert len(body["files"]) == expected, raw
        assert body["nextPageToken"]
    last = http.get(
        "/v1beta/files", params={"pageSize": 120}, headers={"x-goog-api-key": KEY_A}
    ).json()
    token = last["nextPageToken"]
    tail = http.get(
        "/v1beta/files",
        params={"pageSize": 100, "pageToken": token},
        headers={"x-goog-api-key": KEY_A},
    )
    assert len(tail.json()["files"]) == 20 and "nextPageToken" not in tail.json()
    r = http.get("/v1beta/files", params={"pageSize": "abc"}, headers={"x-goog-api-key": KEY_A})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")


def test_exact_page_has_no_token(http: httpx.Client) -> None:
    for _ in range(4):
        upload(http, b"x")
    body = http.get(
        "/v1beta/files", params={"pageSize": 2}, headers={"x-goog-api-key": KEY_A}
    ).json()
    second = http.get(
        "/v1beta/files",
        params={"pageSize": 2, "pageToken": body["nextPageToken"]},
        headers={"x-goog-api-key": KEY_A},
    ).json()
    assert len(second["files"]) == 2 and "nextPageToken" not in second


@pytest.mark.parametrize("token", ["garbage", "!!!", "Zzzz", "ZzE6MTIzOg", "eyJhIjoxfQ"])
def test_bad_page_token(http: httpx.Client, token: str) -> None:
    r = http.get("/v1beta/files", params={"pageToken": token}, headers={"x-goog-api-key": KEY_A})
    assert error_of(r) == (400, "INVALID_ARGUMENT", "Invalid page token.")


# --- authentication ----------------------------------------------------------------------------


def test_no_key(http: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1beta/files"),
        ("GET", "/v1beta/files/x"),
        ("DELETE", "/v1beta/files/x"),
    ):
        r = http.request(method, path)
        assert error_of(r) == (
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    assert http.get("/v1beta/files", params={"key": ""}).status_code == 403


def test_key_query_parameter(http: httpx.Client) -> None:
    f = upload(http, b"q")
    assert http.get("/v1beta/" + f["name"], params={"key": KEY_A}).json() == f
    assert http.get("/v1beta/files", params={"key": KEY_A}).json()["files"] == [f]
    assert http.get("/v1beta/" + f["name"], params={"key": "wrong"}).status_code == 400
    # The header wins over the query parameter.
    r = http.get("/v1beta/" + f["name"], params={"key": KEY_A}, headers={"x-goog-api-key": KEY_B})
    assert r.status_code == 403
    assert http.delete("/v1beta/" + f["name"], params={"key": KEY_A}).json() == {}


# --- versions, routes, delete, register --------------------------------------------------------


def test_api_versions_are_equivalent(http: httpx.Client) -> None:
    url = start_upload(http, KEY_A, 1, version="v1alpha")
    assert "/upload/v1alpha/files?" in url
    f = send_chunk(http, url, 0, b"v", finalize=True).json()["file"]
    answers = {
        v: http.get(f"/{v}/{f['name']}", headers={"x-goog-api-key": KEY_A}).json()
        for v in ("v1", "v1beta", "v1alpha")
    }
    assert answers["v1"] == answers["v1beta"] == answers["v1alpha"] == f
    lists = [
        http.get(f"/{v}/files", headers={"x-goog-api-key": KEY_A}).json() for v in ("v1", "v1alpha")
    ]
    assert lists[0] == lists[1] == {"files": [f]}
    assert http.get("/v2/files", headers={"x-goog-api-key": KEY_A}).status_code == 404


def test_unknown_routes(server: ServerProcess, http: httpx.Client) -> None:
    server.admin.reset_stats()
    for method, path in (
        ("GET", "/"),
        ("GET", "/v1beta/models"),
        ("PUT", "/v1beta/files/abc"),
        ("POST", "/v1beta/files/abc:explode"),
        ("GET", "/_gemfs/nope"),
    ):
        r = http.request(method, path, headers={"x-goog-api-key": KEY_A})
        assert error_of(r) == (404, "NOT_FOUND", "Method not found."), path
        assert r.headers["content-type"] == "application/json; charset=UTF-8"
    assert server.admin.stats()["other"] == 5


def test_delete_answers_empty_object(http: httpx.Client) -> None:
    f = upload(http, b"d")
    r = http.delete("/v1/" + f["name"], headers={"x-goog-api-key": KEY_A})
    assert (r.status_code, r.content) == (200, b"{}")
    assert r.headers["content-type"] == "application/json; charset=UTF-8"


def test_register(http: httpx.Client) -> None:
    r = http.post(
        "/v1beta/files:register",
        headers={"x-goog-api-key": KEY_A, "authorization": "Bearer token"},
        json={"uris": ["gs://bucket/a.pdf", "gs://bucket/b.txt"]},
    )
    assert r.status_code == 200, r.text
    files = r.json()["files"]
    assert [f["mimeType"] for f in files] == ["application/pdf", "text/plain"]
    assert {f["source"] for f in files} == {"REGISTERED"}
    assert len(http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A}).json()["files"]) == 2
    bad = http.post(
        "/v1beta/files:register", headers={"x-goog-api-key": KEY_A}, json={"uris": ["http://x"]}
    )
    assert error_of(bad)[:2] == (400, "INVALID_ARGUMENT")


def test_accepted_connections_have_nodelay() -> None:
    """Responses go out in two writes (head, body); without TCP_NODELAY each waits ~40 ms for
    the client's delayed ACK. asyncio sets it on accepted sockets only when the listening
    socket says IPPROTO_TCP, which `_bind` makes sure of: check that on a real accept."""
    import asyncio
    import socket

    from gemfs.server.main import _bind

    async def accept_one() -> int:
        listener = _bind("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            nodelay = await seen
            writer.close()
        return nodelay

    assert asyncio.run(accept_one()) != 0


# --- CORS (§12): browsers with an API key -------------------------------------------------------

ORIGIN = "https://app.example"


@pytest.mark.parametrize(
    "path",
    ["/v1beta/files", "/v1/files/abc", "/upload/v1beta/files", "/download/v1/files/a:download"],
)
def test_preflight_reflects_origin_and_requested_headers(
    server: ServerProcess, http: httpx.Client, path: str
) -> None:
    server.admin.reset_stats()
    requested = "x-goog-api-key, x-goog-upload-protocol, x-goog-upload-command, content-type"
    r = http.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": requested,
        },
    )
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-headers"] == requested
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    assert int(r.headers["access-control-max-age"]) > 0
    assert set(server.admin.stats().values()) == {0}  # not an API call: not counted


def test_answers_to_a_page_expose_the_upload_headers(server_process: ServerProcess) -> None:
    server = server_process
    headers = {**START_HEADERS, "Origin": ORIGIN}
    r = raw_request(server.url, "POST", "/upload/v1beta/files", headers, b"{'file': {}}")
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") == ORIGIN
    exposed = {h.strip().lower() for h in r.header("Access-Control-Expose-Headers").split(",")}
    assert {
        "x-goog-upload-url",
        "x-goog-upload-status",
        "x-goog-upload-size-received",
        "x-goog-upload-chunk-granularity",
        "x-goog-upload-control-url",
    } <= exposed
    # Errors too, and the upload URL's own answers.
    with server.http() as http:
        missing = http.get(
            "/v1beta/files/nope", headers={"x-goog-api-key": KEY_A, "Origin": ORIGIN}
        )
        assert missing.status_code == 403
        assert missing.headers["access-control-allow-origin"] == ORIGIN
        url = r.header("X-Goog-Upload-URL")
        assert url is not None
        q = http.post(url, headers={"X-Goog-Upload-Command": "query", "Origin": "null"})
        assert q.headers["access-control-allow-origin"] == "null"
        # Without an Origin (not a browser) nothing is added.
        plain = http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A})
        assert "access-control-allow-origin" not in plain.headers
        # OPTIONS elsewhere is still no method of the API.
        assert http.options("/nowhere", headers={"Origin": ORIGIN}).status_code == 404
