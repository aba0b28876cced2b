"""Uploading with the real tools: cp, cp -r, cp -p, touch, rsync, shutil; overwrite and rm.
Every upload is checked from the other side, through the SDK: name, size and sha256."""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import shutil
import subprocess

import pytest
from google.genai import types

from tests.mount.conftest import wait_for


def sha_field(data: bytes) -> str:
    """The API's sha256Hash: base64 of the hex digest."""
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def remote_files(sdk) -> dict[str, list[types.File]]:
    by_name: dict[str, list[types.File]] = {}
    for f in sdk.files.list(config={"page_size": 100}):
        by_name.setdefault(f.display_name, []).append(f)
    return by_name


def assert_uploaded(sdk, display_name: str, data: bytes) -> types.File:
    files = remote_files(sdk).get(display_name, [])
    assert len(files) == 1, f"{display_name!r}: {len(files)} Files remotely"
    f = files[0]
    assert (f.size_bytes or 0) == len(data)
    assert f.sha256_hash == sha_field(data)
    return f


@pytest.mark.parametrize(
    "name, data",
    [
        ("small.txt", b"hello gemini\n"),
        ("empty.bin", b""),
        ("chanson d'été 🎵.txt", "non-ASCII name\n".encode()),
        ("big.bin", os.urandom(8 * 1024 * 1024 + 12345)),
    ],
    ids=["small", "zero-bytes", "non-ascii", "over-8MiB"],
)
def test_cp_uploads_and_sidecar_matches_get(mount, sdk, tmp_path, name, data):
    src = tmp_path / "src" / name
    src.parent.mkdir()
    src.write_bytes(data)
    mount.sh(f"cp {shlex(src)} ./")
    f = assert_uploaded(sdk, name, data)
    assert os.path.getsize(mount.path / name) == len(data)
    sidecar = mount.sh(f"cat {shlex(name + '.meta.json')} | python3 -m json.tool").stdout
    meta = json.loads(sidecar)
    assert meta["name"] == f.name
    assert meta["displayName"] == name
    # The sidecar is the File resource: parsed by the SDK's own model it is what files.get gives.
    got = sdk.files.get(name=f.name)
    assert types.File._from_response(response=meta, kwargs={}) == got
    if data:
        assert meta["sizeBytes"] == str(len(data))
    else:
        assert "sizeBytes" not in meta  # proto3 JSON omits a zero


def shlex(value) -> str:
    import shlex as _shlex

    return _shlex.quote(str(value))


def test_cp_r_nested_folder(mount, sdk, tmp_path):
    tree = {"proj/a.txt": b"a", "proj/sub/b.txt": b"bb", "proj/sub/deeper/c.py": b"print(1)\n"}
    for rel, data in tree.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    mount.sh(f"cp -r {shlex(tmp_path / 'proj')} ./")
    for rel, data in tree.items():
        f = assert_uploaded(sdk, rel, data)
        if rel.endswith(".py"):
            assert f.mime_type == "text/plain"
    assert sorted(os.listdir(mount.path / "proj" / "sub")) == ["b.txt", "deeper"]


def test_rsync_uploads_each_file_once_under_its_final_name(mount, sdk, admin, tmp_path):
    src = tmp_path / "site"
    files = {f"site/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(6)}
    files["site/nested/deep.md"] = b"# deep\n"
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    admin.reset_stats()
    mount.sh(f"rsync -a {shlex(src)} ./")
    assert admin.stats()["upload_start"] == len(files)
    remote = remote_files(sdk)
    assert sorted(remote) == sorted(files)  # no temp name left remotely
    for rel, data in files.items():
        assert_uploaded(sdk, rel, data)


def test_cp_p_touch_and_copy2(mount, sdk, tmp_path):
    src = tmp_path / "keep.txt"
    src.write_bytes(b"preserve me")
    os.utime(src, (1_600_000_000, 1_600_000_000))
    mount.sh(f"cp -p {shlex(src)} ./kept.txt")
    assert_uploaded(sdk, "kept.txt", b"preserve me")
    mount.sh("touch ./touched.txt")
    assert_uploaded(sdk, "touched.txt", b"")
    mount.sh("touch ./kept.txt")  # accepted and ignored on an uploaded File
    shutil.copy2(src, mount.path / "copy2.txt")
    assert_uploaded(sdk, "copy2.txt", b"preserve me")


def test_overwrite_replaces_the_file(mount, sdk, tmp_path):
    (tmp_path / "v1").write_bytes(b"version one")
    (tmp_path / "v2").write_bytes(b"version two, longer")
    mount.sh(f"cp {shlex(tmp_path / 'v1')} ./doc.txt")
    first = assert_uploaded(sdk, "doc.txt", b"version one")
    mount.sh(f"cp {shlex(tmp_path / 'v2')} ./doc.txt")
    second = assert_uploaded(sdk, "doc.txt", b"version two, longer")
    assert second.name != first.name
    assert os.path.getsize(mount.path / "doc.txt") == len(b"version two, longer")


def test_close_again_without_new_writes_does_not_upload_again(mount, sdk, admin):
    admin.reset_stats()
    fd = os.open(mount.path / "dup.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"written once")
    os.close(os.dup(fd))  # this process still holds fd: no upload yet
    assert admin.stats()["upload_start"] == 0
    os.close(fd)  # the last close: the upload, returned to close()
    assert admin.stats()["upload_start"] == 1
    assert_uploaded(sdk, "dup.txt", b"written once")


def test_shell_redirect_and_dd_upload_once(mount, sdk, admin):
    # Both close a dup'd descriptor before writing; only the last close uploads.
    admin.reset_stats()
    mount.sh("echo hello > ./redirect.txt")
    mount.sh("dd if=/dev/zero of=./dd.bin bs=64k count=3 status=none")
    assert_uploaded(sdk, "redirect.txt", b"hello\n")
    assert_uploaded(sdk, "dd.bin", bytes(3 * 65536))
    assert sorted(remote_files(sdk)) == ["dd.bin", "redirect.txt"]
    assert admin.stats()["upload_start"] == 2


def test_rm_and_rm_r(mount, sdk, tmp_path):
    for rel in ("gone.txt", "dir/a.txt", "dir/sub/b.txt"):
        p = tmp_path / "src" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    mount.sh(f"cp -r {shlex(tmp_path / 'src')}/. ./")
    assert set(remote_files(sdk)) == {"gone.txt", "dir/a.txt", "dir/sub/b.txt"}
    mount.sh("rm gone.txt")
    assert not (mount.path / "gone.txt").exists()
    mount.sh("rm -r dir")
    assert not (mount.path / "dir").exists()
    assert remote_files(sdk) == {}


def test_mkdir_then_copy_into_it(mount, sdk, tmp_path):
    mount.sh("mkdir -p albums/2026")
    assert (mount.path / "albums" / "2026").is_dir()
    (tmp_path / "t.mp3").write_bytes(b"ID3\x03\x00fake mp3")
    mount.sh(f"cp {shlex(tmp_path / 't.mp3')} albums/2026/")
    f = assert_uploaded(sdk, "albums/2026/t.mp3", b"ID3\x03\x00fake mp3")
    assert f.mime_type == "audio/mp3"
    mount.sh("mkdir empty && rmdir empty")
    proc = mount.sh("rmdir albums", check=False)
    assert proc.returncode != 0 and "not empty" in proc.stderr.lower()


def test_write_from_python_with_seek_and_truncate(mount, sdk):
    with open(mount.path / "edited.bin", "wb") as f:
        f.write(b"x" * 100)
        f.seek(10)
        f.write(b"HELLO")
        f.truncate(50)
    expected = b"x" * 10 + b"HELLO" + b"x" * 35
    assert_uploaded(sdk, "edited.bin", expected)


def test_writes_at_any_offset_holes_appends_and_mmap(mount, sdk, tmp_path):
    """WRITE requests reach the staged file through write_buf (gemfs/fuse_plus.py) at the
    offsets the kernel gives: a hole left by a seek, `>>`, an overwrite in the middle, and the
    pages of a shared mmap, which the kernel writes back before close returns."""
    mount.sh("dd if=/dev/urandom of=holes.bin bs=4096 count=2 seek=3 status=none")
    holes = (mount.path / "holes.bin").read_bytes()
    assert holes[: 3 * 4096] == b"\0" * (3 * 4096) and len(holes) == 5 * 4096
    assert_uploaded(sdk, "holes.bin", holes)

    mount.sh("printf 'one\\n' > log.txt && printf 'two\\n' >> log.txt")
    assert_uploaded(sdk, "log.txt", b"one\ntwo\n")

    data = bytearray(os.urandom(3 * 1024 * 1024))
    (tmp_path / "src").write_bytes(data)
    mount.sh(f"cp {shlex(tmp_path / 'src')} mid.bin")
    mount.sh("printf PATCHED | dd of=mid.bin bs=1 seek=1500000 conv=notrunc status=none")
    data[1500000:1500007] = b"PATCHED"
    assert_uploaded(sdk, "mid.bin", bytes(data))

    with open(mount.path / "mapped.bin", "wb") as f:
        f.truncate(3 * 4096)
    fd = os.open(mount.path / "mapped.bin", os.O_RDWR)
    try:
        with mmap.mmap(fd, 3 * 4096) as mapped:
            mapped[4096:4101] = b"hello"
    finally:
        os.close(fd)
    assert_uploaded(sdk, "mapped.bin", b"\0" * 4096 + b"hello" + b"\0" * (2 * 4096 - 5))


def test_unlink_while_open_is_never_uploaded(mount, sdk, admin):
    admin.reset_stats()
    f = open(mount.path / "scratch.txt", "wb")
    f.write(b"temporary")
    os.unlink(mount.path / "scratch.txt")
    f.close()
    assert admin.stats()["upload_start"] == 0
    assert remote_files(sdk) == {}


def test_sdk_never_lists_partial_uploads(mount, sdk, tmp_path):
    """While a big cp runs, every listing shows the File whole or not at all."""
    data = os.urandom(24 * 1024 * 1024)
    (tmp_path / "big").write_bytes(data)
    proc = subprocess.Popen(["cp", str(tmp_path / "big"), str(mount.path / "big.bin")])
    seen = []
    while proc.poll() is None:
        for f in sdk.files.list(config={"page_size": 100}):
            seen.append(f.size_bytes)
    assert proc.wait() == 0
    assert all(size == len(data) for size in seen)
    assert_uploaded(sdk, "big.bin", data)
    wait_for(lambda: (mount.path / "big.bin").exists(), what="big.bin in the mount")
