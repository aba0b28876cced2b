"""Bad input through a real mount (issue 5, part 4): awkward names written with cp round-trip
as docs/SEMANTICS.md says, hostile display names made through the SDK show up under safe names
that stay inside the mount, writes past the limits fail with EFBIG / EDQUOT and leave nothing
listed, a bad key is refused in one line that does not repeat it, and garbage answers from the
server fail operations cleanly while the mount keeps answering."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
import subprocess

import pytest
from google.genai import errors as genai_errors

from tests import launcher
from tests.mount.conftest import isolated_env
from tests.reliability.conftest import (
    KEY,
    TALLY,
    Mount,
    daemon_pid,
    delete_all,
    faults_hit,
    in_mount_table,
    listing,
    sha_field,
    wait_for,
)

SIDECAR = ".meta.json"


def _walk(root) -> list[str]:
    """Every path under `root` (files and directories), checked to resolve inside it."""
    root = os.path.realpath(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            assert "/" not in name and name not in (".", ".."), repr(name)
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            assert real == path and real.startswith(root + os.sep), (path, real)
            found.append(path)
    return found


@pytest.fixture(scope="module")
def names_mount(rel_root, shared_server):
    m = Mount(rel_root, shared_server, name="names").start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def clean(shared_server, names_mount):
    """An empty project and a mount that shows it empty, before and after the test."""
    sdk = shared_server.client(KEY)
    shared_server.admin.clear_faults()
    delete_all(sdk)
    wait_for(lambda: not os.listdir(names_mount.path), timeout=15, what="empty mount")
    yield sdk
    shared_server.admin.clear_faults()
    delete_all(sdk)


# --- names written through the mount ------------------------------------------------------------

# (name given to cp, name ls shows once the upload is in). Each is shown as it was created, and
# its display name is the same, since none holds an escape (SEMANTICS.md, Names; names that do,
# and names over 255 bytes, refused at create, are in tests/mount/test_names.py).
CP_NAMES = [
    ("with space.txt", None),
    ("  spaces around  ", None),
    ("emoji 📄 résumé 日本語.txt", None),
    ("line\nbreak.txt", None),  # control characters are legal in Linux names: shown as they are
    ("tab\tand\x01\x7fctl.bin", None),
    ("a" * 251 + ".txt", None),  # exactly 255 bytes, NAME_MAX
    ("é" * 125 + ".txt", None),  # 254 bytes of 2-byte characters
    ("-rf", None),
    ("*?[glob] $HOME `x`.txt", None),
    ("quote' \"dq\" back\\slash", None),
    ("100% a%0Ab %41", None),  # a '%' that starts no escape stays as it is
    ("...", None),
    ("solo.meta.json", None),  # looks like a sidecar, but there is no 'solo' beside it
]


def test_awkward_names_round_trip_through_cp_ls_cat_rm(names_mount, clean, tmp_path):
    sdk, mnt = clean, names_mount.path
    payloads = {}
    for i, (name, _) in enumerate(CP_NAMES):
        src = tmp_path / f"src{i}"
        payloads[name] = f"payload {i} {name!r}\n".encode()
        src.write_bytes(payloads[name])
        subprocess.run(["cp", str(src), str(mnt / name)], check=True, timeout=60)
    # A directory renamed with mv, then a file copied into it: its display name is the path.
    names_mount.sh("mkdir 'dir with space' && mv 'dir with space' 'dir ✓ renamed'")
    src = tmp_path / "nested"
    src.write_bytes(b"nested\n")
    subprocess.run(["cp", str(src), str(mnt / "dir ✓ renamed" / "in\nside")], check=True,
                   timeout=60)
    payloads["dir ✓ renamed/in\nside"] = b"nested\n"

    remote = listing(sdk)
    assert set(remote) == set(payloads)
    for name, data in payloads.items():
        (f,) = remote[name]
        assert f.sha256_hash == sha_field(data) and f.size_bytes == len(data)

    shown = {name: local or name for name, local in CP_NAMES}
    assert set(os.listdir(mnt)) == set(shown.values()) | {"dir ✓ renamed"}
    assert os.listdir(mnt / "dir ✓ renamed") == ["in\nside"]
    ls = names_mount.sh("ls -1b && ls -lR >/dev/null")
    assert "with\\ space.txt" in ls.stdout and "line\\nbreak.txt" in ls.stdout

    for name, local in shown.items():
        # Even a 255-byte name's sidecar is reachable: FUSE passes names up to 1024 bytes.
        proc = subprocess.run(["cat", "--", local + SIDECAR], cwd=mnt, capture_output=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        meta = json.loads(proc.stdout)
        assert meta["displayName"] == name
        assert meta["sha256Hash"] == sha_field(payloads[name])

    for local in list(shown.values()) + ["dir ✓ renamed/in\nside"]:
        subprocess.run(["rm", "--", local], cwd=mnt, check=True, timeout=60)
    assert listing(sdk) == {}
    assert os.listdir(mnt) == ["dir ✓ renamed"]  # a local directory stays until rmdir
    names_mount.sh("rmdir 'dir ✓ renamed'")
    TALLY.add(bytes_written=sum(map(len, payloads.values())),
              bytes_verified=sum(map(len, payloads.values())))


def test_a_name_that_is_not_utf8_fails_at_once_and_lists_nothing(names_mount, clean, tmp_path):
    """Linux names are bytes, display names are Unicode: `\\xff` cannot become one. The copy
    is refused at create with EINVAL (not retried for --retry-deadline), as is a mkdir, and
    nothing is uploaded."""
    src = tmp_path / "src"
    src.write_bytes(b"bytes")
    dst = os.fsencode(names_mount.path) + b"/bad\xffname.txt"
    admin = names_mount.server.admin
    starts = admin.stats()["upload_start"]
    proc = subprocess.run([b"cp", os.fsencode(src), dst], capture_output=True, timeout=90)
    assert proc.returncode != 0
    assert b"Invalid argument" in proc.stderr, proc.stderr
    # Refused at create: not one upload was tried, so none could be retried.
    assert admin.stats()["upload_start"] == starts
    with pytest.raises(OSError) as mkdir_error:
        os.mkdir(os.fsencode(names_mount.path) + b"/dir\xfe")
    assert mkdir_error.value.errno == errno.EINVAL
    assert listing(clean) == {}
    assert os.listdir(names_mount.path) == []
    TALLY.add(failed_cleanly=1)


# --- hostile display names made elsewhere -------------------------------------------------------

# display name -> the local path it must show as (None: only checked to be inside the mount).
REMOTE_NAMES = {
    "../../etc/passwd": "%2E%2E/%2E%2E/etc/passwd",
    "../escape.txt": "%2E%2E/escape.txt",
    "..": "%2E%2E~{id}",  # '%2E%2E' is the directory of the two above (Names rule 8)
    "./dot/./x": "%2E/dot/%2E/x",
    "a/../b": "a/%2E%2E/b",
    "/leading/slash": "leading/slash",
    "a//b///c": "a/b/c",
    "trailing/": "trailing",
    "line1\nline2": "line1\nline2",
    "ctl\x01\x1b[31m\x7f": "ctl\x01\x1b[31m\x7f",
    "%00 and %2E%2E": "%2500 and %2E%2E",  # '%' escaped only where it would read as an escape
    "%2E": "%252E",
    "y" * 512: None,  # 512 characters: one component over 255 bytes, cut and hashed
    "é" * 300 + ".txt": None,  # 604 bytes in one component, extension kept
    "alone.meta.json": "alone.meta.json",
    "pair": "pair",
    "pair.meta.json": "pair.meta~{id}.json",  # the sidecar name of 'pair': suffixed
    "dup": None,
    "dup ": "dup ",
}


def test_hostile_remote_display_names_stay_inside_the_mount(names_mount, clean, rel_root):
    sdk, mnt = clean, names_mount.path
    passwd = open("/etc/passwd", "rb").read()
    staging_parent = sorted(os.listdir(rel_root))
    made, expected = {}, {}
    for name, local in REMOTE_NAMES.items():
        data = f"remote {name!r}".encode()
        f = sdk.files.upload(file=io.BytesIO(data),
                             config={"mime_type": "text/plain", "display_name": name})
        made[f.name] = name
        if local is not None:
            expected[name] = local.format(id=f.name.removeprefix("files/"))
    # No display name at all, or one of only slashes: the File is `<id><ext>`.
    for name in ("/", "//"):
        f = sdk.files.upload(file=io.BytesIO(b"slashes"),
                             config={"mime_type": "text/plain", "display_name": name})
        made[f.name] = name
    f = sdk.files.upload(file=io.BytesIO(b"nameless"), config={"mime_type": "audio/mpeg"})
    made[f.name] = None
    # Names the API refuses never become Files.
    for bad in ("z" * 513, "z\ud800"):
        with pytest.raises(genai_errors.ClientError) as exc_info:
            sdk.files.upload(file=io.BytesIO(b"no"),
                             config={"mime_type": "text/plain", "display_name": bad})
        assert exc_info.value.code == 400
    assert len(list(sdk.files.list(config={"page_size": 100}))) == len(made)

    def files_under_mount():
        return [p for p in _walk(mnt) if os.path.isfile(p)]

    paths = wait_for(lambda: (lambda ps: ps if len(ps) == len(made) else None)(files_under_mount()),
                     timeout=15, what="every File under the mount")
    rel = {os.path.relpath(p, mnt) for p in paths}
    for name, local in expected.items():
        assert local in rel, (name, local, sorted(rel))
    for p in rel:
        assert all(len(part.encode()) <= 255 for part in p.split("/")), p
    y_local = [p for p in rel if p.startswith("yyy")]
    digest = hashlib.sha1(("y" * 512).encode()).hexdigest()[:8]
    assert len(y_local) == 1 and y_local[0].endswith("~" + digest) and len(y_local[0]) == 255
    assert any(p.startswith("éé") and p.endswith(".txt") for p in rel)
    by_id = {name.removeprefix("files/"): disp for name, disp in made.items()}
    nameless = [i for i, d in by_id.items() if d is None]
    assert f"{nameless[0]}.mp3" in rel

    # Every File is reachable exactly once: its sidecar, read with cat, names it.
    seen = {}
    for p in sorted(rel):
        out = subprocess.run(["cat", "--", p + SIDECAR], cwd=mnt, capture_output=True,
                             check=True, timeout=30)
        meta = json.loads(out.stdout)
        assert meta["name"] not in seen, (p, seen[meta["name"]])
        seen[meta["name"]] = p
        assert meta.get("displayName") == made[meta["name"]] or made[meta["name"]] in ("/", "//")
    assert len(seen) == len(made)
    names_mount.sh("ls -laR >/dev/null && find . -type f | wc -l && du -s .")

    assert open("/etc/passwd", "rb").read() == passwd
    assert sorted(os.listdir(rel_root)) == staging_parent  # nothing made beside the staging dir
    staged = [os.path.join(d, f) for d, _, fs in os.walk(names_mount.staging) for f in fs]
    assert all(os.path.basename(p) == "lock" for p in staged), staged
    TALLY.add(survived=len(made))


def test_a_lone_surrogate_from_another_server_cannot_break_the_tree():
    """`gemfs serve` refuses such names (above); a server that sends "\\ud800" anyway must not
    take the whole mount down: the name is escaped and every other File keeps its place."""
    from gemfs.catalog import Tree
    from gemfs.model import FileRecord

    def record(file_id: str, display_name: str) -> FileRecord:
        return FileRecord.from_api({"name": f"files/{file_id}", "displayName": display_name,
                                    "mimeType": "text/plain", "createTime": "2026-01-01T00:00:00Z"})

    tree = Tree([record("a1", "bad\ud800/x\udcff"), record("a2", "s" * 300 + "\ud800"),
                 record("a3", "fine.txt")], [])
    assert set(tree.dirs[()]) >= {"bad%ED%A0%80", "fine.txt"}
    assert list(tree.dirs[("bad%ED%A0%80",)]) == ["x%ED%B3%BF"]
    for names in tree.dirs.values():
        for name in names:
            assert len(name.encode("utf-8")) <= 255  # strict UTF-8: no surrogate is left


# --- limits ---------------------------------------------------------------------------------------


def test_writes_past_the_limits_fail_with_efbig_and_edquot(rel_root, shared_server, clean):
    """Complements tests/mount/test_behaviour.py (cp and a shell redirect): the exact errno to
    a program, truncate and a write far past the end, and staged bytes of open files count."""
    sdk = clean
    m = Mount(rel_root, shared_server, name="limits",
              extra=("--max-file-size", "100000", "--quota", "150000")).start()
    try:
        big = os.open(m.path / "big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.write(big, b"x" * 50_000) == 50_000
            with pytest.raises(OSError) as exc_info:
                os.pwrite(big, b"y", 100_000)  # one byte past the limit, far past the end
            assert exc_info.value.errno == errno.EFBIG
            with pytest.raises(OSError) as exc_info:
                os.ftruncate(big, 100_001)
            assert exc_info.value.errno == errno.EFBIG
        finally:
            with pytest.raises(OSError) as exc_info:
                os.close(big)  # the close reports the failed write: nothing goes up
            assert exc_info.value.errno == errno.EFBIG
        proc = m.sh("truncate -s 100001 trunc.bin", check=False)
        assert proc.returncode != 0 and "File too large" in proc.stderr

        a = os.open(m.path / "a.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        b = os.open(m.path / "b.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(a, b"a" * 80_000)
            with pytest.raises(OSError) as exc_info:
                os.write(b, b"b" * 80_000)  # 160 000 staged > the 150 000 quota
            assert exc_info.value.errno == errno.EDQUOT
        finally:
            os.close(a)
            with pytest.raises(OSError) as exc_info:
                os.close(b)
            assert exc_info.value.errno == errno.EDQUOT
        # The kernel sends RELEASE after close() has returned, in the background; until then the
        # failed file is still an open one and listed as such.
        wait_for(lambda: os.listdir(m.path) == ["a.bin"], timeout=30,
                 what="the failed b.bin gone once its handle is released")
        remote = listing(sdk)
        assert list(remote) == ["a.bin"] and remote["a.bin"][0].size_bytes == 80_000
        TALLY.add(failed_cleanly=4)
    finally:
        m.stop()


# --- a bad key ----------------------------------------------------------------------------------


def test_a_bad_key_is_refused_in_one_line_that_does_not_repeat_it(rel_root, shared_server):
    bad_key = "BAD-KEY-" + secrets.token_urlsafe(24)
    m = Mount(rel_root, shared_server, key=bad_key, name="badkey", extra=("--debug",))
    runs = []
    runs.append(m.gemfs("mount", str(m.path), *m.args, timeout=60))
    # The same key from the environment, the SDK's convention.
    env = {**isolated_env(rel_root), "GEMINI_API_KEY": bad_key}
    args = [a for a in m.args]
    i = args.index("--api-key-file")
    del args[i:i + 2]
    runs.append(launcher.run(["mount", str(m.path), *args], env=env, timeout=60,
                             scratch=rel_root / "badkey-cli"))
    for proc in runs:
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.strip() == "gemfs: API key not valid"
        assert bad_key not in proc.stderr
    assert not in_mount_table(m.path)
    assert bad_key not in m.read_log() and "api list" in m.read_log()  # --debug was on
    TALLY.add(failed_cleanly=len(runs))


# --- garbage from the server --------------------------------------------------------------------


def test_garbage_answers_fail_cleanly_and_the_mount_keeps_answering(
    rel_root, shared_server, clean, tmp_path
):
    sdk, admin = clean, shared_server.admin
    m = Mount(rel_root, shared_server, name="garbage", extra=("--retry-deadline", "2")).start()
    try:
        src = tmp_path / "one.txt"
        src.write_bytes(b"one\n")
        m.sh(f"cp {src} ./before.txt")
        daemon = daemon_pid(m)

        # Listing answers garbage, every time: the last good snapshot keeps answering.
        admin.set_faults({"op": "list", "action": "garbage", "times": -1})
        # A stale snapshot is refreshed on access, so look at the mount until a refresh is hit.
        wait_for(lambda: os.listdir(m.path) and any(r.get("hits") for r in admin.faults()),
                 timeout=15, interval=0.2, what="a listing to hit garbage")
        for _ in range(5):
            assert m.sh("ls -l").stdout.count("before.txt") == 1
        faults_hit(admin)

        # Upload start answers garbage: cp fails (EIO after the retry deadline), nothing listed.
        # Retried, then given up: waits of at least 0.125 s doubling (0.25 s x [0.5, 1.5))
        # sum past the 2 s deadline by the 5th, so one upload makes 2 to 5 attempts.
        admin.set_faults({"op": "upload_start", "action": "garbage", "times": -1})
        proc = m.sh(f"cp {src} ./refused.txt", check=False)
        assert proc.returncode != 0 and "Input/output error" in proc.stderr
        assert 2 <= faults_hit(admin) <= 5
        TALLY.add(failed_cleanly=1)

        # One garbage answer to the last chunk: the SDK sends it again and the copy succeeds.
        admin.set_faults({"op": "upload_finalize", "action": "garbage", "times": 1})
        m.sh(f"cp {src} ./absorbed.txt")
        assert faults_hit(admin) == 1
        TALLY.add(survived=1)

        # Get answers garbage (the mount never needs get; the SDK gets a clean ValueError).
        admin.set_faults({"op": "get", "action": "garbage", "times": 1})
        f = listing(sdk)["before.txt"][0]
        with pytest.raises(ValueError):
            sdk.files.get(name=f.name)
        assert faults_hit(admin) == 1

        assert os.path.exists(f"/proc/{daemon}") and in_mount_table(m.path)
        wait_for(lambda: sorted(os.listdir(m.path)) == ["absorbed.txt", "before.txt"],
                 timeout=15, what="the listing to recover")
        assert set(listing(sdk)) == {"absorbed.txt", "before.txt"}
        assert "failed unexpectedly" not in m.read_log()
    finally:
        m.stop()

