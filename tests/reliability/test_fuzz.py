"""Fuzzing `gemfs serve` (issue 5, part 4): hypothesis-built requests to every public route and
hypothesis state machines that drive upload sessions, Files and listings of two projects while
a model says what each answer must be. Nothing may answer 5xx (no faults are set), every error
is Google-shaped JSON, the server stays up, and after a restart the store agrees with the model:
every File whole (size, sha256), each project's quota usage equal to its Files plus its open
upload sessions, SQLite intact, no byte on disk that no row owns.

The fast run is derandomized (the same examples every time); `-m long` runs many more."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import sqlite3
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    multiple,
    rule,
    run_state_machine_as_test,
)

from gemfs.server.config import project_of_key
from gemfs.server.store import Store
from tests.reliability.conftest import TALLY, ServerProcess

STATUSES = {"INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND", "ALREADY_EXISTS",
            "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "FAILED_PRECONDITION"}
VERSIONS = ["v1", "v1beta", "v1alpha"]
FAST = dict(derandomize=True, database=None, deadline=None, print_blob=True,
            suppress_health_check=list(HealthCheck))


def sha_field(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def check_answer(r: httpx.Response) -> None:
    """No 5xx; every error is `{"error": {"code", "message", "status"}}` with the HTTP code."""
    TALLY.add(fuzz_requests=1)
    assert r.status_code < 500, (r.request.method, str(r.request.url), r.status_code, r.text)
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert r.headers["content-type"].startswith("application/json"), r.headers
        error = r.json()["error"]
        assert error["code"] == r.status_code, error
        assert isinstance(error["message"], str) and error["message"], error
        assert error["status"] in STATUSES, error


@pytest.fixture(scope="module")
def fuzz_server(rel_root):
    """Open mode (no key file): every distinct key is a project, so each example starts with
    projects of its own on one long-lived server."""
    server = ServerProcess(rel_root / "fuzz-data", keys=(), admin=False)
    with server:
        yield server
    assert "internal error" not in server.stderr_text()


# --- single random requests ---------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
any_text = st.text(max_size=40)  # any code point, lone surrogates included
numbers = st.one_of(st.integers(-(2**70), 2**70).map(str), printable)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
file_fields = st.dictionaries(
    st.sampled_from(["name", "display_name", "displayName", "mime_type", "mimeType",
                     "size_bytes", "sizeBytes", "state", "uri"]),
    json_values | any_text | st.integers(-5, 5000),
    max_size=5,
)


def _json_body(value) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes: valid JSON text, invalid Unicode.
    return json.dumps(value).encode()


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    json_values.map(_json_body),
    file_fields.map(lambda f: _json_body({"file": f})),
    st.lists(any_text, max_size=3).map(lambda u: _json_body({"uris": u})),
)
segment = st.one_of(st.sampled_from(["abc123def456", "my-file", "..", ".", "%2e%2e", "a:download",
                                     ":download", "files", ""]), any_text)


# Every strategy is built once, here: one built inside a composite is built (and validated)
# again on every draw, which was a fifth of the client's CPU in these tests.
_versions = st.sampled_from(VERSIONS + ["v2", "", "V1"])
_path_templates = st.sampled_from([
    "/{v}/files", "/{v}/files/{seg}", "/{v}/files/{seg}:download",
    "/download/{v}/files/{seg}:download", "/upload/{v}/files", "/{v}/files:register",
    "/{seg}", "/upload/{v}/files/{seg}", "/{v}/files/{seg}/{seg}",
])


@st.composite
def paths(draw) -> str:
    v = draw(_versions)
    seg = quote(draw(segment), safe="")  # quoted: no brace is left for format() to read
    return draw(_path_templates).format(v=v, seg=seg)


_headers = st.dictionaries(
    st.sampled_from(["x-goog-api-key", "X-Goog-Upload-Protocol", "X-Goog-Upload-Command",
                     "X-Goog-Upload-Offset", "X-Goog-Upload-Header-Content-Length",
                     "X-Goog-Upload-Header-Content-Type", "Content-Type", "Host"]),
    st.one_of(st.sampled_from(["resumable", "start", "upload", "upload, finalize", "finalize",
                               "query", "cancel", "multipart", "0", "-1", "junk-a", "junk-b"]),
              printable.map(str.strip)),  # h11 will not send surrounding blanks
    max_size=6,
)
_params = st.dictionaries(
    st.sampled_from(["pageSize", "page_size", "pageToken", "page_token", "key", "alt",
                     "upload_id", "upload_protocol", "displayName"]),
    st.one_of(numbers, any_text.map(lambda t: t.encode("utf-8", "surrogatepass")
                                     .decode("utf-8", "replace"))),
    max_size=4,
)
_methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])
_paths = paths()


@st.composite
def requests_(draw) -> dict:
    headers = draw(_headers)
    if "Host" in headers and not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", headers["Host"]):
        del headers["Host"]  # h11 would refuse to send it: not a request the server can get
    params = draw(_params)
    return {
        "method": draw(_methods),
        "url": draw(_paths),
        "params": params,
        "headers": headers,
        "content": draw(bodies),
    }


def send(http: httpx.Client, req: dict) -> httpx.Response:
    # Absolute, so that a path starting with '//' stays a path and is not read as a host.
    url = str(http.base_url).rstrip("/") + req["url"]
    r = http.request(req["method"], url, params=req["params"], headers=req["headers"],
                     content=req["content"])
    check_answer(r)
    return r


def _random_requests(server: ServerProcess, examples: int) -> None:
    with server.http(timeout=30) as http:
        @settings(max_examples=examples, **FAST)
        @given(requests_())
        def one(req):
            send(http, req)

        one()
    assert server.proc.poll() is None


@pytest.mark.heavy(25)
@pytest.mark.timeout(600)  # a budget of requests, not of time (a busy machine is slower)
def test_random_requests_never_5xx(fuzz_server):
    _random_requests(fuzz_server, 1000)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_random_requests_never_5xx_long(fuzz_server):
    _random_requests(fuzz_server, 5000)


# --- upload sessions, Files and listings against a model ----------------------------------------


@dataclass
class Session:
    key: str
    declared: int
    display_name: str | None
    data: bytearray = field(default_factory=bytearray)
    last: tuple[int, int] | None = None  # offset and length of the last accepted chunk
    file_id: str | None = None  # set once finalized

    def is_resend(self, offset: int, length: int) -> bool:
        return self.last == (offset, length) and offset + length == len(self.data)


# Everything the machines left behind, per key: Files (id -> bytes) and open sessions' sizes.
# Checked against the store once the machines are done.
LEFT: dict[str, dict] = {}
_serial = itertools.count()


def upload_machine(url: str):
    class UploadMachine(RuleBasedStateMachine):
        """Two projects upload, query, cancel, get, list and delete, with junk in between."""

        sessions = Bundle("sessions")
        files = Bundle("files")

        @initialize()
        def setup(self):
            n = next(_serial)
            self.keys = (f"fuzz{n}-a", f"fuzz{n}-b")
            self.http = httpx.Client(base_url=url, timeout=30)
            self.model: dict[str, Session | None] = {}  # upload URL -> session (None: gone)
            self.files_of: dict[str, dict[str, bytes]] = {k: {} for k in self.keys}

        def teardown(self):
            if not hasattr(self, "keys"):
                return
            self.http.close()
            for key in self.keys:
                LEFT[key] = {
                    "files": dict(self.files_of[key]),
                    "reserved": sum(s.declared for s in self.model.values()
                                    if s and s.key == key and s.file_id is None),
                }

        def _send(self, method, target, **kwargs) -> httpx.Response:
            r = self.http.request(method, target, **kwargs)
            check_answer(r)
            return r

        # -- sessions --

        @rule(target=sessions, which=st.integers(0, 1),
              size=st.one_of(st.integers(0, 16), st.integers(0, 2500)),
              display_name=st.one_of(st.none(), any_text, st.just("x" * 513), st.just("é" * 512)),
              version=st.sampled_from(VERSIONS), camel=st.booleans())
        def start(self, which, size, display_name, version, camel):
            key = self.keys[which]
            field_name = "displayName" if camel else "display_name"
            meta = {field_name: display_name} if display_name else {}
            r = self._send("POST", f"/upload/{version}/files", content=_json_body({"file": meta}),
                           headers={"x-goog-api-key": key, "X-Goog-Upload-Protocol": "resumable",
                                    "X-Goog-Upload-Command": "start",
                                    "X-Goog-Upload-Header-Content-Length": str(size),
                                    "X-Goog-Upload-Header-Content-Type": "a/b"})
            valid = display_name is None or (
                len(display_name) <= 512 and not re.search("[\ud800-\udfff]", display_name))
            if not valid:
                assert r.status_code == 400
                return multiple()
            assert r.status_code == 200, r.text
            upload_url = r.headers["x-goog-upload-url"]
            self.model[upload_url] = Session(key, size, display_name or None)
            return upload_url

        @rule(upload_url=sessions, data=st.one_of(st.binary(max_size=8), st.binary(max_size=1200)),
              where=st.sampled_from(["right", "right", "right", "resend", "wrong"]),
              wrong=st.integers(-3, 5000),
              command=st.sampled_from(["upload", "upload, finalize", "finalize",
                                       "UPLOAD , Finalize"]),
              offset_header=st.sampled_from(["normal", "normal", "normal", "missing", "junk"]),
              as_key=st.sampled_from(["none", "none", "own", "other"]))
        def chunk(self, upload_url, data, where, wrong, command, offset_header, as_key):
            s = self.model.get(upload_url)
            received = len(s.data) if s else 0
            if where == "right" or s is None:
                offset = received
            elif where == "resend" and s.last is not None:
                offset, length = s.last
                data = bytes(s.data[offset:offset + length])
            else:
                offset = wrong
            cmds = {c.strip().lower() for c in command.split(",")}
            if "upload" not in cmds:
                data = b""
            headers = {"X-Goog-Upload-Command": command}
            if offset_header == "normal":
                headers["X-Goog-Upload-Offset"] = str(offset)
            elif offset_header == "junk":
                headers["X-Goog-Upload-Offset"] = "12abc"
            elif "upload" not in cmds:
                offset = received  # a bare finalize may leave the offset out
            headers.update(self._key_header(s, as_key))
            r = self._send("POST", upload_url, headers=headers, content=data)
            if s is None or as_key == "other":
                assert r.status_code == 404 and r.headers["x-goog-upload-status"] == "final"
                return
            bad_offset = offset_header == "junk" or (
                offset_header == "missing" and "upload" in cmds)
            if bad_offset or offset < 0:
                assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                if s.file_id is None:
                    self.model[upload_url] = None  # terminal: the session is gone
                return
            if s.file_id is not None:
                if "finalize" in cmds and s.is_resend(offset, len(data)):
                    if s.file_id not in self.files_of[s.key]:  # deleted since: nothing to repeat
                        assert r.status_code == 404 and r.headers["x-goog-upload-status"] == "final"
                        return
                    assert r.status_code == 200 and r.json()["file"]["name"] == f"files/{s.file_id}"
                else:
                    assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                return
            if offset != received:
                if s.is_resend(offset, len(data)):
                    assert r.status_code == 200
                    assert r.headers["x-goog-upload-size-received"] == str(received)
                else:
                    assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                    self.model[upload_url] = None
                return
            if "upload" in cmds:
                if received + len(data) > s.declared:
                    assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                    self.model[upload_url] = None
                    return
                s.data += data
                s.last = (offset, len(data))
            if "finalize" not in cmds:
                assert r.status_code == 200, r.text
                assert r.headers["x-goog-upload-status"] == "active"
                assert r.headers["x-goog-upload-size-received"] == str(len(s.data))
                return
            if len(s.data) != s.declared:
                assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                self.model[upload_url] = None
                return
            assert r.status_code == 200 and r.headers["x-goog-upload-status"] == "final", r.text
            f = r.json()["file"]
            assert f.get("displayName") == s.display_name
            assert int(f.get("sizeBytes", "0")) == s.declared
            assert f["sha256Hash"] == sha_field(bytes(s.data))
            s.file_id = f["name"].removeprefix("files/")
            self.files_of[s.key][s.file_id] = bytes(s.data)

        @rule(upload_url=sessions, seed=st.integers(0, 2**32), pieces=st.integers(1, 3))
        def finish(self, upload_url, seed, pieces):
            """The rest of the declared bytes at the right offsets, the last with finalize."""
            s = self.model.get(upload_url)
            if s is None or s.file_id is not None:
                return
            rest = random.Random(seed).randbytes(s.declared - len(s.data))
            cut = [len(rest) * i // pieces for i in range(pieces + 1)]
            for i in range(pieces):
                piece = rest[cut[i]:cut[i + 1]]
                last = i == pieces - 1
                r = self._send("POST", upload_url, content=piece, headers={
                    "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
                    "X-Goog-Upload-Offset": str(len(s.data))})
                assert r.status_code == 200, r.text
                s.last = (len(s.data), len(piece))
                s.data += piece
            f = r.json()["file"]
            assert f["sha256Hash"] == sha_field(bytes(s.data))
            assert int(f.get("sizeBytes", "0")) == s.declared == len(s.data)
            s.file_id = f["name"].removeprefix("files/")
            self.files_of[s.key][s.file_id] = bytes(s.data)

        def _key_header(self, s: Session | None, as_key: str) -> dict:
            if as_key == "none" or s is None:
                return {}
            own = s.key
            other = next(k for k in self.keys if k != own)
            return {"x-goog-api-key": own if as_key == "own" else other}

        @rule(upload_url=sessions, as_key=st.sampled_from(["none", "own", "other"]))
        def query(self, upload_url, as_key):
            s = self.model.get(upload_url)
            headers = {"X-Goog-Upload-Command": "query", **self._key_header(s, as_key)}
            r = self._send("POST", upload_url, headers=headers)
            if s is None or as_key == "other":
                assert r.status_code == 404
                return
            assert r.status_code == 200
            assert r.headers["x-goog-upload-size-received"] == str(len(s.data))
            assert r.headers["x-goog-upload-status"] == ("final" if s.file_id else "active")

        @rule(upload_url=sessions, command=st.sampled_from(["cancel", "explode", "", "start"]))
        def cancel_or_bogus(self, upload_url, command):
            s = self.model.get(upload_url)
            r = self._send("POST", upload_url, headers={"X-Goog-Upload-Command": command})
            if s is None:
                assert r.status_code == 404
            elif command == "cancel" and s.file_id is None:
                assert r.status_code == 200 and r.headers["x-goog-upload-status"] == "cancelled"
                self.model[upload_url] = None
            else:
                assert r.status_code == 400 and r.headers["x-goog-upload-status"] == "final"
                if s.file_id is None:
                    self.model[upload_url] = None  # every 400 on a session is terminal

        @rule(upload_url=sessions, flip=st.integers(0, 63), to=st.sampled_from("AbZ09-_"))
        def guessed_session(self, upload_url, flip, to):
            token = re.search(r"upload_id=([^&]+)", upload_url).group(1)
            i = flip % len(token)
            guess = token[:i] + (to if token[i] != to else "x") + token[i + 1:]
            r = self._send("POST", upload_url.replace(token, guess),
                           headers={"X-Goog-Upload-Command": "upload, finalize",
                                    "X-Goog-Upload-Offset": "0"}, content=b"guess")
            assert r.status_code == 404 and r.headers["x-goog-upload-status"] == "final"

        # -- Files --

        @rule(target=files, pick=st.integers(0, 1000))
        def pick_file(self, pick):
            owned = sorted((k, i) for k, fs in self.files_of.items() for i in fs)
            return owned[pick % len(owned)] if owned else multiple()

        @rule(ref=files, as_other=st.booleans(), version=st.sampled_from(VERSIONS))
        def get(self, ref, as_other, version):
            key, file_id = ref
            if as_other:
                key = next(k for k in self.keys if k != key)
            r = self._send("GET", f"/{version}/files/{file_id}", headers={"x-goog-api-key": key})
            data = self.files_of[key].get(file_id)
            if data is None:
                assert r.status_code == 403
                return
            assert r.status_code == 200
            assert int(r.json().get("sizeBytes", "0")) == len(data)
            assert r.json()["sha256Hash"] == sha_field(data)

        @rule(ref=consumes(files), as_other=st.booleans())
        def delete(self, ref, as_other):
            key, file_id = ref
            if as_other:
                key = next(k for k in self.keys if k != key)
            r = self._send("DELETE", f"/v1beta/files/{file_id}", headers={"x-goog-api-key": key})
            if self.files_of[key].pop(file_id, None) is None:
                assert r.status_code == 403
            else:
                assert r.status_code == 200 and r.json() == {}

        @rule(which=st.integers(0, 1), page_size=st.integers(-1, 7))
        def list_all(self, which, page_size):
            key = self.keys[which]
            seen, token = [], None
            for _ in range(200):
                params = {"pageSize": page_size, **({"pageToken": token} if token else {})}
                r = self._send("GET", "/v1/files", params=params, headers={"x-goog-api-key": key})
                assert r.status_code == 200
                body = r.json()
                assert body.get("files") or "nextPageToken" not in body
                seen += [(f["name"].removeprefix("files/"), f) for f in body.get("files", [])]
                token = body.get("nextPageToken")
                if not token:
                    break
            ids = [i for i, _ in seen]
            assert len(ids) == len(set(ids)) and set(ids) == set(self.files_of[key])
            for file_id, f in seen:
                assert f["sha256Hash"] == sha_field(self.files_of[key][file_id])

        @rule(req=requests_())
        def junk(self, req):
            send(self.http, req)

    return UploadMachine


def _check_store_after_restart(server: ServerProcess) -> dict:
    """Stop the server, check the store on disk against LEFT, then start it again and check the
    same through HTTP. Returns figures for the report."""
    server.stop()
    db = sqlite3.connect(server.data_dir / "gemfs.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT project, id, size_bytes, sha256_hex, blob FROM files").fetchall()
    db.close()
    blobs = {p.name for p in (server.data_dir / "blobs").iterdir()}
    for project, file_id, size, digest, blob in rows:
        assert blob in blobs, (file_id, blob)
        data = (server.data_dir / "blobs" / blob).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, file_id
    assert blobs == {r[4] for r in rows}, "bytes on disk that no File owns"
    store = Store(server.data_dir)
    try:
        for key, left in LEFT.items():
            expected = sum(map(len, left["files"].values())) + left["reserved"]
            assert store.usage(project_of_key(key)) == expected, key
    finally:
        store.close()
    server.start()
    with server.http() as http:
        for key, left in LEFT.items():
            listed = {}
            token = None
            while True:
                r = http.get("/v1beta/files", headers={"x-goog-api-key": key},
                             params={"pageSize": 100, **({"pageToken": token} if token else {})})
                check_answer(r)
                for f in r.json().get("files", []):
                    listed[f["name"].removeprefix("files/")] = f
                token = r.json().get("nextPageToken")
                if not token:
                    break
            assert set(listed) == set(left["files"]), key
            for file_id, data in left["files"].items():
                r = http.get(f"/v1/files/{file_id}", headers={"x-goog-api-key": key})
                check_answer(r)
                assert r.json()["sha256Hash"] == sha_field(data)
                assert int(r.json().get("sizeBytes", "0")) == len(data)
    return {"files": sum(len(v["files"]) for v in LEFT.values()), "projects": len(LEFT)}


def _run_machines(server: ServerProcess, examples: int, steps: int) -> None:
    LEFT.clear()
    before = TALLY.fuzz_requests
    run_state_machine_as_test(
        upload_machine(server.url),
        settings=settings(max_examples=examples, stateful_step_count=steps, **FAST),
    )
    assert server.proc.poll() is None
    figures = _check_store_after_restart(server)
    print(f"\nfuzz: {TALLY.fuzz_requests - before} requests, {examples} machines x {steps} steps, "
          f"{figures['files']} Files in {figures['projects']} projects checked after a restart")


@pytest.mark.heavy(35)
@pytest.mark.timeout(600)  # a budget of machines, not of time (a busy machine is slower)
def test_upload_state_machine_keeps_the_store_consistent(fuzz_server):
    _run_machines(fuzz_server, examples=100, steps=40)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_upload_state_machine_keeps_the_store_consistent_long(fuzz_server):
    _run_machines(fuzz_server, examples=500, steps=60)
