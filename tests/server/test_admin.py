"""The admin API (`--admin`): request counters, scripted faults and what the SDK makes of them,
latency, seeding, generated Files, and the clock."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import time

import httpx
import pytest
from google.genai import errors

from tests.conftest import KEY_A, KEY_B
from tests.helpers import ServerProcess
from tests.server.rawhttp import send_chunk, start_upload, upload_command

MIB = 1024 * 1024


def hex_of(f) -> str:
    return base64.b64decode(f.sha256_hash).decode()


# --- stats -------------------------------------------------------------------------------------


def test_stats_count_every_public_request(server: ServerProcess, client_a) -> None:
    assert set(server.admin.stats()) == {
        "upload_start",
        "upload_chunk",
        "upload_finalize",
        "get",
        "list",
        "delete",
        "download",
        "other",
    }
    server.admin.reset_stats()
    assert set(server.admin.stats().values()) == {0}
    f = client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    client_a.files.get(name=f.name)
    with pytest.raises(errors.ClientError):
        client_a.files.get(name="files/missing")  # failures count too
    list(client_a.files.list())
    with pytest.raises(errors.ClientError):
        client_a.files.download(file=f.name)
    client_a.files.delete(name=f.name)
    server.http().get("/nowhere")
    assert server.admin.stats() == {
        "upload_start": 1,
        "upload_chunk": 0,
        "upload_finalize": 1,
        "get": 2,
        "list": 1,
        "delete": 1,
        "download": 1,
        "other": 1,
    }


# --- faults ------------------------------------------------------------------------------------


def test_transient_upload_faults_are_retried_by_the_sdk(server: ServerProcess, client_a) -> None:
    """503/429 on a chunk carry no X-Goog-Upload-Status: the SDK sleeps 1 s and re-sends the
    same chunk, which the server stores only once."""
    data = random.Random(3).randbytes(8 * MIB + 100)
    server.admin.set_faults(
        {"op": "upload_chunk", "action": "error", "status": 503},
        {"op": "upload_finalize", "action": "error", "status": 429},
    )
    server.admin.reset_stats()
    f = client_a.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain"})
    assert f.size_bytes == len(data)
    assert hex_of(f) == hashlib.sha256(data).hexdigest()
    stats = server.admin.stats()
    assert (stats["upload_chunk"], stats["upload_finalize"]) == (2, 2)
    assert [r["hits"] for r in server.admin.faults()] == [1, 1]


def test_terminal_upload_fault_fails_the_sdk_at_once(server: ServerProcess, client_a) -> None:
    server.admin.set_faults({"op": "upload_chunk", "action": "error", "status": 500})
    with pytest.raises(errors.ServerError) as exc_info:
        client_a.files.upload(file=io.BytesIO(bytes(9 * MIB)), config={"mime_type": "text/plain"})
    assert (exc_info.value.code, exc_info.value.status) == (500, "INTERNAL")
    assert server.admin.stats()["upload_chunk"] == 1  # not re-sent


def test_faulted_chunk_stores_nothing(server_process: ServerProcess) -> None:
    server = server_process  # a reset needs a real connection
    with server.http() as http:
        url = start_upload(http, KEY_A, 10)
        server.admin.set_faults({"op": "upload_chunk", "action": "error", "status": 400})
        r = send_chunk(http, url, 0, b"12345")
        assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
        q = upload_command(http, url, "query")  # the rule fired once and is spent
        assert q.headers["x-goog-upload-size-received"] == "0"
        server.admin.set_faults({"op": "upload_chunk", "action": "garbage"})
        r = send_chunk(http, url, 0, b"12345")
        assert r.status_code == 200 and "x-goog-upload-status" not in r.headers
        assert upload_command(http, url, "query").headers["x-goog-upload-size-received"] == "0"
        server.admin.set_faults({"op": "upload_chunk", "action": "reset"})
        with pytest.raises(httpx.TransportError):
            send_chunk(http, url, 0, b"12345" * 100_000)
        assert upload_command(http, url, "query").headers["x-goog-upload-size-received"] == "0"
        assert send_chunk(http, url, 0, b"12345").headers["x-goog-upload-size-received"] == "5"
        done = send_chunk(http, url, 5, b"67890", finalize=True).json()["file"]
        assert (
            base64.b64decode(done["sha256Hash"]).decode()
            == hashlib.sha256(b"1234567890").hexdigest()
        )


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of whichever httpx flavour the SDK uses."""
    found: list[type[Exception]] = [httpx.TransportError]
    try:
        import httpx2

        found.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(found)


def test_reset(server_process: ServerProcess) -> None:
    server, client_a = server_process, server_process.client(KEY_A)
    f = client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    server.admin.set_faults({"op": "get", "action": "reset"})
    with pytest.raises(transport_errors()):
        client_a.files.get(name=f.name)
    assert client_a.files.get(name=f.name).name == f.name
    # The SDK's chunk loop does not retry network errors: the upload fails.
    server.admin.set_faults({"op": "upload_chunk", "action": "reset"})
    with pytest.raises(transport_errors()):
        client_a.files.upload(file=io.BytesIO(bytes(9 * MIB)), config={"mime_type": "text/plain"})
    assert [g.name for g in client_a.files.list()] == [f.name]


# --- faults after the handler: the work is done, the answer is lost ------------------------------


@pytest.mark.parametrize("action", ["reset", "close"])
def test_lost_finalize_answer_leaves_a_final_session_with_its_file(
    server_process: ServerProcess, action: str
) -> None:
    server = server_process
    data = b"0123456789"
    with server.http() as http:
        url = start_upload(http, KEY_A, len(data), "text/plain")
        assert send_chunk(http, url, 0, data[:4]).headers["x-goog-upload-size-received"] == "4"
        server.admin.set_faults({"op": "upload_finalize", "action": action, "when": "after"})
        with pytest.raises(httpx.TransportError):
            send_chunk(http, url, 4, data[4:], finalize=True)
        # The finalize committed: the query says so and hands over the File.
        q = upload_command(http, url, "query")
        assert (q.status_code, q.headers["x-goog-upload-status"]) == (200, "final")
        assert q.headers["x-goog-upload-size-received"] == str(len(data))
        done = q.json()["file"]
        assert base64.b64decode(done["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
        assert done["sizeBytes"] == str(len(data))
        listed = http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A}).json()["files"]
        assert [f["name"] for f in listed] == [done["name"]]  # one File, not two
        # Re-sending the finalizing chunk gets the same File again.
        again = send_chunk(http, url, 4, data[4:], finalize=True)
        assert again.status_code == 200 and again.json()["file"]["name"] == done["name"]
        # Once the File is deleted the session still says final, with nothing to hand over.
        assert http.delete(f"/v1beta/{done['name']}", headers={"x-goog-api-key": KEY_A}).is_success
        q = upload_command(http, url, "query")
        assert (q.status_code, q.headers["x-goog-upload-status"], q.content) == (200, "final", b"")
    assert server.admin.faults()[0]["hits"] == 1


def test_lost_chunk_answer_keeps_the_chunk(server_process: ServerProcess) -> None:
    server = server_process
    with server.http() as http:
        url = start_upload(http, KEY_A, 10)
        server.admin.set_faults({"op": "upload_chunk", "action": "reset", "when": "after"})
        with pytest.raises(httpx.TransportError):
            send_chunk(http, url, 0, b"12345")
        q = upload_command(http, url, "query")
        assert (q.headers["x-goog-upload-status"], q.headers["x-goog-upload-size-received"]) == (
            "active",
            "5",
        )
        assert send_chunk(http, url, 5, b"67890", finalize=True).status_code == 200


def test_lost_start_answer_still_opened_the_session(process_factory) -> None:
    """The session exists although its URL never reached the client: it holds its quota."""
    srv = process_factory(args=["--project-quota", "100"])
    srv.admin.set_faults({"op": "upload_start", "action": "reset", "when": "after"})
    with srv.http() as http:
        with pytest.raises(httpx.TransportError):
            start_upload(http, KEY_A, 80)
        with pytest.raises(AssertionError, match="429"):
            start_upload(http, KEY_A, 30)
        start_upload(http, KEY_A, 20)


def test_lost_delete_and_list_answers_did_their_work(server_process: ServerProcess) -> None:
    server, client_a = server_process, server_process.client(KEY_A)
    f = client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    g = client_a.files.upload(file=io.BytesIO(b"y"), config={"mime_type": "text/plain"})
    server.admin.set_faults(
        {"op": "delete", "action": "reset", "when": "after"},
        {"op": "list", "action": "close", "when": "after"},
        {"op": "get", "action": "error", "status": 503, "when": "after"},
    )
    server.admin.reset_stats()
    with pytest.raises(transport_errors()):
        client_a.files.delete(name=f.name)
    with pytest.raises(transport_errors()):
        list(client_a.files.list())
    with pytest.raises(errors.ServerError):
        client_a.files.get(name=g.name)
    # The delete happened: the File is gone, and a retried delete finds nothing.
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.delete(name=f.name)
    assert exc_info.value.code == 403
    assert [h.name for h in client_a.files.list()] == [g.name]
    assert [r["hits"] for r in server.admin.faults()] == [1, 1, 1]
    stats = server.admin.stats()
    assert (stats["delete"], stats["list"], stats["get"]) == (2, 2, 1)


def test_error_after_a_chunk_makes_the_sdk_resend_what_was_stored(
    server: ServerProcess, client_a
) -> None:
    """A 503 after the chunk was stored: the SDK re-sends it and the server, recognising the
    copy, stores it once."""
    data = random.Random(5).randbytes(8 * MIB + 7)
    server.admin.set_faults(
        {"op": "upload_chunk", "action": "error", "status": 503, "when": "after"}
    )
    server.admin.reset_stats()
    f = client_a.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain"})
    assert f.size_bytes == len(data) and hex_of(f) == hashlib.sha256(data).hexdigest()
    assert (server.admin.stats()["upload_chunk"], server.admin.faults()[0]["hits"]) == (2, 1)


def test_garbage_and_errors_on_json_calls(server: ServerProcess, client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    server.admin.set_faults({"op": "list", "action": "garbage", "times": 2})
    with pytest.raises(ValueError):  # the SDK's json.loads fails
        list(client_a.files.list())
    with server.http() as http:
        r = http.get("/v1beta/files", headers={"x-goog-api-key": KEY_A})
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
    server.admin.set_faults(
        {"op": "delete", "action": "error", "status": 503, "message": "try later"},
        {"op": "upload_start", "action": "error", "status": 429},
    )
    with pytest.raises(errors.ServerError) as exc_info:
        client_a.files.delete(name=f.name)
    assert (exc_info.value.code, exc_info.value.status, exc_info.value.message) == (
        503,
        "UNAVAILABLE",
        "try later",
    )
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.upload(file=io.BytesIO(b"y"), config={"mime_type": "text/plain"})
    assert (exc_info.value.code, exc_info.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert client_a.files.get(name=f.name).name == f.name  # nothing was deleted


def test_skip_and_times(server: ServerProcess, client_a) -> None:
    f = client_a.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    server.admin.set_faults({"op": "get", "action": "error", "status": 500, "skip": 1, "times": 2})
    outcomes = []
    for _ in range(4):
        try:
            client_a.files.get(name=f.name)
            outcomes.append("ok")
        except errors.ServerError as exc:
            outcomes.append(exc.code)
    assert outcomes == ["ok", 500, 500, "ok"]
    assert server.admin.faults()[0]["hits"] == 2
    server.admin.set_faults({"op": "get", "action": "error", "status": 502, "times": -1})
    for _ in range(3):
        with pytest.raises(errors.ServerError):
            client_a.files.get(name=f.name)
    server.admin.clear_faults()
    assert server.admin.faults() == []
    assert client_a.files.get(name=f.name).name == f.name


def test_stall(server: ServerProcess, client_a) -> None:
    server.admin.set_faults({"op": "list", "action": "stall", "seconds": 0.4})
    started = time.monotonic()
    assert list(client_a.files.list()) == []  # stalled, then answered normally
    assert time.monotonic() - started >= 0.4
    list(client_a.files.list())
    assert server.admin.faults()[0]["hits"] == 1  # the second list was not stalled


@pytest.mark.parametrize(
    "rule",
    [
        {"op": "nope", "action": "error"},
        {"op": "get", "action": "explode"},
        {"op": "get", "action": "error", "status": 200},
        {"op": "get", "action": "error", "times": 0},
        {"op": "get", "action": "stall", "seconds": "soon"},
        {"op": "get", "action": "reset", "when": "later"},
        "not an object",
    ],
)
def test_bad_fault_rules(server: ServerProcess, rule: object) -> None:
    r = server.http().post("/_gemfs/admin/faults", json={"rules": [rule]})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert server.admin.faults() == []


def test_latency(server_factory) -> None:
    srv = server_factory(args=["--latency-ms", "250"])
    client = srv.client(KEY_A)
    started = time.monotonic()
    list(client.files.list())
    assert time.monotonic() - started >= 0.25
    # The delay is applied where public requests are counted; admin requests never pass there.
    before = srv.admin.stats()
    srv.admin.faults()
    assert srv.admin.stats() == before == {**before, "list": 1}


# --- seed, generated, clock ----------------------------------------------------------------------


def test_seed_many(server: ServerProcess) -> None:
    out = server.admin.seed(KEY_A, 5000, prefix="bench/", size=2048)
    assert out["count"] == 5000 and len(set(out["names"])) == 5000
    with server.http() as http:
        seen, token, pages = [], None, 0
        while True:
            params = {"pageSize": 100, **({"pageToken": token} if token else {})}
            body = http.get(
                "/v1beta/files", params=params, headers={"x-goog-api-key": KEY_A}
            ).json()
            seen += body["files"]
            pages += 1
            token = body.get("nextPageToken")
            if not token:
                break
    assert pages == 50
    assert [f["displayName"] for f in seen[:2]] == ["bench/4999", "bench/4998"]
    assert seen[-1]["displayName"] == "bench/0000"
    assert {f["sizeBytes"] for f in seen} == {"2048"}
    assert {f["state"] for f in seen} == {"ACTIVE"}
    assert (
        base64.b64decode(seen[0]["sha256Hash"]).decode() == hashlib.sha256(bytes(2048)).hexdigest()
    )
    assert server.admin.stats()["list"] == 50


def test_seed_counts_to_quota(server_factory) -> None:
    srv = server_factory(args=["--project-quota", "10000"])
    srv.admin.seed(KEY_A, 9, size=1000)
    r = srv.http().post("/_gemfs/admin/seed",
        headers={"x-goog-api-key": KEY_A},
        json={"count": 2, "sizeBytes": 1000},
    )
    assert r.status_code == 429
    assert r.json()["error"]["details"][0]["violations"][0]["quotaId"] == (
        "FileStorageBytesPerProject"
    )
    client = srv.client(KEY_A)
    with pytest.raises(errors.ClientError) as exc_info:
        client.files.upload(file=io.BytesIO(bytes(1001)), config={"mime_type": "text/plain"})
    assert exc_info.value.code == 429
    client.files.upload(file=io.BytesIO(bytes(1000)), config={"mime_type": "text/plain"})


def test_generated_options(server: ServerProcess, client_a) -> None:
    f = server.admin.generated(
        KEY_A, b"named", name="my-output", display_name="out", mime_type="audio/wav"
    )
    assert (f["name"], f["displayName"], f["mimeType"]) == ("files/my-output", "out", "audio/wav")
    assert client_a.files.download(file="files/my-output") == b"named"
    r = server.http().post("/_gemfs/admin/generated", content=b"x")
    assert r.status_code == 403  # a project (API key) is required
    r = server.http().post("/_gemfs/admin/generated",
        params={"name": "my-output"},
        headers={"x-goog-api-key": KEY_A},
        content=b"x",
    )
    assert r.status_code == 409
    assert list((server.data_dir / "uploads").iterdir()) == []


BATCH_ID = "batch-o08hk76gv328ihxcssjsgwt3g6omtfysxi46"  # a real batch output's id (42 chars)


def test_files_of_other_services_have_long_ids(server: ServerProcess, client_a) -> None:
    f = server.admin.generated(KEY_A, b"results", name=BATCH_ID, mime_type="application/jsonl")
    assert f["name"] == f"files/{BATCH_ID}"
    assert client_a.files.get(name=f"files/{BATCH_ID}").size_bytes == 7
    assert [g.name for g in client_a.files.list()] == [f"files/{BATCH_ID}"]
    assert client_a.files.download(file=f"files/{BATCH_ID}") == b"results"
    longest = "a" * 63 + "z"
    assert server.admin.generated(KEY_A, b"", name=longest)["name"] == f"files/{longest}"
    for bad in ("a" * 65, "-batch", "Batch-1", "batch_1"):
        r = server.http().post("/_gemfs/admin/generated",
            params={"name": bad},
            headers={"x-goog-api-key": KEY_A},
            content=b"x",
        )
        assert r.status_code == 400, bad
    # The public start keeps the user rule: at most 40 characters.
    with server.http() as http:
        r = http.post(
            "/upload/v1beta/files",
            headers={
                "x-goog-api-key": KEY_A,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": "1",
                "X-Goog-Upload-Header-Content-Type": "text/plain",
            },
            json={"file": {"name": "a" * 41}},
        )
        assert r.status_code == 400


def test_delete_refuses_ids_over_40_characters(server: ServerProcess, client_a) -> None:
    """§12: the real API's answer, whether or not such a File exists."""
    server.admin.generated(KEY_A, b"r", name=BATCH_ID)
    server.admin.generated(KEY_A, b"s", name="b" * 40)
    with server.http() as http:
        for file_id in (BATCH_ID, "c" * 41):
            r = http.delete(f"/v1beta/files/{file_id}", headers={"x-goog-api-key": KEY_A})
            assert (r.status_code, r.json()) == (
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "File ID (name excluding 'files/') cannot be more than 40 "
                        "characters",
                        "status": "INVALID_ARGUMENT",
                    }
                },
            )
    with pytest.raises(errors.ClientError) as exc_info:
        client_a.files.delete(name=f"files/{BATCH_ID}")
    assert exc_info.value.code == 400
    client_a.files.delete(name="files/" + "b" * 40)  # 40 is still fine
    assert [g.name for g in client_a.files.list()] == [f"files/{BATCH_ID}"]


def test_clock(server: ServerProcess) -> None:
    before = server.http().get("/_gemfs/admin/clock").json()
    assert before["offsetSeconds"] == 0
    after = server.admin.advance_clock(3600)
    assert after["offsetSeconds"] == 3600 and after["now"] > before["now"]
    r = server.http().post("/_gemfs/admin/clock", json={"advanceSeconds": -1})
    assert r.status_code == 400


def test_admin_is_off_by_default(server_factory) -> None:
    srv = server_factory(admin=False)
    for path in ("/stats", "/faults", "/clock"):
        r = srv.http().get("/_gemfs/admin" + path)
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    r = srv.http().post("/_gemfs/admin/seed", headers={"x-goog-api-key": KEY_B}, json={"count": 1}
    )
    assert r.status_code == 404


def test_an_admin_bug_is_answered_like_any_internal_error(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One error wrapper for public and admin routes: a Google-shaped 500, and the log says
    where, not Starlette's plain-text 500."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.store, "seed", broken)
    with server.http() as http:
        r = http.post("/_gemfs/admin/seed", headers={"x-goog-api-key": KEY_A}, json={"count": 1})
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}
    }
    assert r.headers["content-type"] == "application/json; charset=UTF-8"
