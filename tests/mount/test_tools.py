"""Everyday tools on a real mount (issue 9): cp, mv, rsync, mktemp, sed -i, Python's tempfile,
shell redirects, getfattr/setfattr, unzip, tar, awkward names, swap files and renameat2 flags.

Each test drives the real tool and asserts exact outcomes: exit codes, the Files on the server,
and request counts from the server's admin stats.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.mount.test_copy import assert_uploaded, remote_files, sha_field, shlex
from tests.mount.conftest import wait_for

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
AT_FDCWD = -100


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None,
                              reason=f"{tool} is not installed (make system-deps installs it)")


def uploads(admin) -> int:
    return admin.stats()["upload_start"]


def renameat2(old, new, flags: int) -> int:
    """libc's renameat2 (Python's os has none); returns 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def tag(path) -> None:
    """Give a local file a user xattr, or skip when the temp file system keeps none."""
    try:
        os.setxattr(path, "user.colour", b"red")
    except OSError as e:
        if e.errno != errno.ENOTSUP:
            raise
        pytest.skip(f"{path.parent} keeps no user xattrs")


def put(mount, tmp_path, name: str, data: bytes) -> None:
    """`cp` a local file holding `data` to `name` in the mount."""
    src = tmp_path / "put.src"
    src.write_bytes(data)
    mount.sh(f"cp {shlex(src)} {shlex(name)}")


# -- cp, mv -----------------------------------------------------------------------------------


def test_cp_new_and_over_an_existing_file(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "doc.txt", b"one")
    first = assert_uploaded(sdk, "doc.txt", b"one")
    admin.reset_stats()
    put(mount, tmp_path, "doc.txt", b"two!")
    second = assert_uploaded(sdk, "doc.txt", b"two!")
    assert second.name != first.name
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (1, 1)


def test_mv_from_local_disk_into_the_mount(mount, sdk, tmp_path):
    src = tmp_path / "moved.txt"
    src.write_bytes(b"moving in")
    mount.sh(f"mv {shlex(src)} ./")
    assert not src.exists()
    assert_uploaded(sdk, "moved.txt", b"moving in")


def test_mv_of_an_own_file_inside_the_mount(mount, sdk, tmp_path):
    put(mount, tmp_path, "a.txt", b"rename me")
    proc = mount.sh("mv a.txt b.txt", check=False)
    assert proc.returncode == 0, proc.stderr
    assert set(remote_files(sdk)) == {"b.txt"}
    assert_uploaded(sdk, "b.txt", b"rename me")


# -- rsync, temp-then-rename writers ----------------------------------------------------------


def test_rsync_twice_uploads_nothing_the_second_time(mount, sdk, admin, tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        (src / "sub").mkdir(parents=True, exist_ok=True)
        (src / f"f{i}.txt").write_bytes(b"x" * (i + 1))
    (src / "sub" / "deep.txt").write_bytes(b"deep")
    for path in src.rglob("*"):  # files made days ago, as a real tree's are
        os.utime(path, (1_600_000_000, 1_600_000_000))
    admin.reset_stats()
    mount.sh(f"rsync -a {shlex(src)}/ d/")
    assert uploads(admin) == 5
    admin.reset_stats()
    mount.sh(f"rsync -a {shlex(src)}/ d/")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (0, 0)
    assert sorted(remote_files(sdk)) == sorted(
        ["d/f0.txt", "d/f1.txt", "d/f2.txt", "d/f3.txt", "d/sub/deep.txt"])


def test_mktemp_then_mv(mount, sdk, admin):
    admin.reset_stats()
    proc = mount.sh(f't=$(mktemp -p {shlex(mount.path)}); echo hi > "$t"; mv "$t" final',
                    check=False)
    assert proc.returncode == 0, proc.stderr
    assert list(remote_files(sdk)) == ["final"]
    assert_uploaded(sdk, "final", b"hi\n")
    assert os.listdir(mount.path) == ["final"]
    assert uploads(admin) == 1


def test_sed_in_place(mount, sdk, tmp_path):
    put(mount, tmp_path, "conf.txt", b"colour=red\n")
    proc = mount.sh("sed -i s/red/blue/ conf.txt", check=False)
    assert proc.returncode == 0, proc.stderr
    assert list(remote_files(sdk)) == ["conf.txt"]
    assert_uploaded(sdk, "conf.txt", b"colour=blue\n")


def test_python_mkstemp_then_replace(mount, sdk, admin):
    admin.reset_stats()
    fd, tmp = tempfile.mkstemp(dir=mount.path)
    os.write(fd, b"atomic save")
    os.close(fd)
    os.replace(tmp, mount.path / "saved.txt")
    assert list(remote_files(sdk)) == ["saved.txt"]
    assert_uploaded(sdk, "saved.txt", b"atomic save")
    # mkstemp's names follow no tool's exact convention, so the temp file is uploaded at its
    # close and again under the final name, and the temp File is deleted.
    stats = admin.stats()
    assert (uploads(admin), stats["delete"]) == (2, 1)


# -- several writers, unlinked files ----------------------------------------------------------


def test_shell_loop_redirect_uploads_once(mount, sdk, admin):
    admin.reset_stats()
    mount.sh("for i in $(seq 20); do date; done > loop.txt")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (1, 0)
    files = remote_files(sdk)["loop.txt"]
    assert len(files) == 1 and files[0].size_bytes == os.path.getsize(mount.path / "loop.txt")
    assert files[0].size_bytes == 20 * len(mount.sh("date").stdout.encode())


def test_temporary_file_works_and_is_never_uploaded(mount, sdk, admin):
    admin.reset_stats()
    with tempfile.TemporaryFile(dir=mount.path) as f:
        f.write(b"0123456789")
        f.seek(2)
        assert f.read(3) == b"234"
        assert os.fstat(f.fileno()).st_size == 10
        f.truncate(4)
        f.seek(0)
        assert f.read() == b"0123"
    assert uploads(admin) == 0
    assert remote_files(sdk) == {}
    assert os.listdir(mount.path) == []


# -- extended attributes ----------------------------------------------------------------------


@needs("getfattr")
def test_getfattr_shows_the_file_metadata(mount, sdk, tmp_path):
    put(mount, tmp_path, "song.txt", b"la la la\n")
    f = assert_uploaded(sdk, "song.txt", b"la la la\n")
    proc = mount.sh("getfattr --absolute-names -d -m user.gemini song.txt")
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    meta = json.loads((mount.path / "song.txt.meta.json").read_text())
    digest = hashlib.sha256(b"la la la\n").hexdigest()
    assert lines == {
        "user.gemini.uri": f'"{f.uri}"',
        "user.gemini.name": f'"{f.name}"',
        "user.gemini.mime_type": '"text/plain"',
        "user.gemini.state": '"ACTIVE"',
        "user.gemini.sha256": f'"{digest}"',
        "user.gemini.expiration_time": f'"{meta["expirationTime"]}"',
    }
    assert f.sha256_hash == sha_field(b"la la la\n")
    # Python sees the same; a missing user name is ENODATA, other namespaces ENOTSUP.
    assert os.getxattr(mount.path / "song.txt", "user.gemini.uri") == f.uri.encode()
    with pytest.raises(OSError) as info:
        os.getxattr(mount.path / "song.txt", "user.other")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:  # ls -l asks; ENOTSUP makes it stop asking
        os.getxattr(mount.path / "song.txt", "security.selinux")
    assert info.value.errno == errno.ENOTSUP


def test_folders_sidecars_and_files_being_written_have_no_xattrs(mount, tmp_path):
    mount.sh("mkdir d")
    put(mount, tmp_path, "d/a.txt", b"a")
    assert os.listxattr(mount.path / "d") == []
    assert os.listxattr(mount.path / "d" / "a.txt.meta.json") == []
    with open(mount.path / "d" / "open.txt", "wb") as f:
        f.write(b"not uploaded yet")
        f.flush()
        assert os.listxattr(mount.path / "d" / "open.txt") == []
    assert "user.gemini.uri" in os.listxattr(mount.path / "d" / "open.txt")
    with pytest.raises(FileNotFoundError):
        os.listxattr(mount.path / "missing")


@needs("setfattr")
def test_setting_or_removing_xattrs_is_refused(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "a.txt", b"a")
    admin.reset_stats()
    proc = mount.sh("setfattr -n user.gemini.state -v FAILED a.txt", check=False)
    assert proc.returncode != 0 and "Operation not supported" in proc.stderr
    proc = mount.sh("setfattr -x user.gemini.uri a.txt", check=False)
    assert proc.returncode != 0 and "Operation not supported" in proc.stderr
    assert os.getxattr(mount.path / "a.txt", "user.gemini.state") == b"ACTIVE"
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (0, 0)


def test_copying_a_file_with_xattrs_in(mount, sdk, tmp_path):
    """ENOTSUP from setxattr: `cp -a` goes on silently (and `gio copy --preserve`, test_gio.py);
    `cp --preserve=xattr` (which asks for them) and `rsync -X` report it, and the bytes are
    uploaded all the same."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"with xattr")
    tag(src / "f")
    assert mount.sh(f"cp -a {shlex(src / 'f')} a1").returncode == 0
    proc = mount.sh(f"cp --preserve=xattr {shlex(src / 'f')} a2", check=False)
    assert proc.returncode == 1 and "Operation not supported" in proc.stderr
    proc = mount.sh(f"rsync -aX {shlex(src)}/ r/", check=False)
    assert proc.returncode == 23 and "Operation not supported" in proc.stderr
    for name in ("a1", "a2", "r/f"):
        assert_uploaded(sdk, name, b"with xattr")


# -- archives -------------------------------------------------------------------------------


@needs("unzip")
def test_unzip_with_a_symlink(mount, sdk, tmp_path):
    src = tmp_path / "z"
    src.mkdir()
    (src / "target.txt").write_bytes(b"target\n")
    os.symlink("target.txt", src / "link")
    archive = tmp_path / "a.zip"
    subprocess.run(["zip", "-qy", str(archive), "target.txt", "link"], cwd=src, check=True)
    proc = mount.sh(f"unzip {shlex(archive)}", check=False)
    out = proc.stdout + proc.stderr
    # unzip writes the link's target into a placeholder file, then unlinks it and calls
    # symlink(), which is refused: it says so ("symlink error"), and the placeholder is gone.
    assert "link" in out and "symlink error: Operation not permitted" in out
    assert list(remote_files(sdk)) == ["target.txt"]
    assert_uploaded(sdk, "target.txt", b"target\n")
    assert sorted(os.listdir(mount.path)) == ["target.txt"]


def test_tar_extracts_into_the_mount(mount, sdk, admin, tmp_path):
    src = tmp_path / "t"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "cf", str(archive), "t"], cwd=tmp_path, check=True)
    admin.reset_stats()
    mount.sh(f"tar xf {shlex(archive)}")
    assert sorted(remote_files(sdk)) == ["t/a.txt", "t/sub/b.bin"]
    assert_uploaded(sdk, "t/a.txt", b"alpha")
    assert_uploaded(sdk, "t/sub/b.bin", (src / "sub" / "b.bin").read_bytes())
    assert uploads(admin) == 2


# -- names ------------------------------------------------------------------------------------


def test_a_newline_and_its_escape_are_two_files(mount, sdk, tmp_path):
    put(mount, tmp_path, "a\nb", b"newline")
    put(mount, tmp_path, "a%0Ab", b"percent")
    assert_uploaded(sdk, "a\nb", b"newline")
    assert_uploaded(sdk, "a%0Ab", b"percent")
    assert sorted(os.listdir(mount.path)) == sorted(["a\nb", "a%0Ab"])


def test_a_256_byte_name_is_refused_at_create(mount, sdk, admin, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    admin.reset_stats()
    proc = mount.sh(f"cp {shlex(tmp_path / 'x')} {'n' * 256}", check=False)
    assert proc.returncode == 1 and "File name too long" in proc.stderr
    assert uploads(admin) == 0
    assert remote_files(sdk) == {}


def test_rm_r_of_an_implicit_folder(mount, sdk, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    for name in ("d/one.txt", "d/sub/two.txt"):
        sdk.files.upload(file=str(tmp_path / "x"),
                         config={"display_name": name, "mime_type": "text/plain"})
    wait_for(lambda: (mount.path / "d" / "sub" / "two.txt").exists(), timeout=15,
             what="the other client's Files in the mount")
    proc = mount.sh("rm -r d", check=False)
    assert proc.returncode == 0, proc.stderr
    assert remote_files(sdk) == {}
    assert not (mount.path / "d").exists()


# -- lock and swap files ----------------------------------------------------------------------


def test_vim_swap_file_is_never_uploaded(mount, sdk, admin):
    admin.reset_stats()
    mount.sh("echo swap > .notes.txt.swp")
    assert ".notes.txt.swp" in os.listdir(mount.path)
    assert uploads(admin) == 0
    mount.stop()
    assert uploads(admin) == 0
    assert remote_files(sdk) == {}


# -- renameat2 --------------------------------------------------------------------------------


def test_rename_exchange_is_refused_and_nothing_changes(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "a.txt", b"aaa")
    put(mount, tmp_path, "b.txt", b"bbbb")
    admin.reset_stats()
    assert renameat2(mount.path / "a.txt", mount.path / "b.txt", RENAME_EXCHANGE) == errno.EINVAL
    assert renameat2(mount.path / "a.txt", mount.path / "c.txt", RENAME_WHITEOUT) == errno.EINVAL
    assert sorted(remote_files(sdk)) == ["a.txt", "b.txt"]
    assert_uploaded(sdk, "a.txt", b"aaa")
    assert_uploaded(sdk, "b.txt", b"bbbb")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (0, 0)


def test_rename_noreplace(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "taken.txt", b"keep")
    mount.sh("mkdir folder")
    admin.reset_stats()
    with open(mount.path / "open.tmp", "wb") as f, open(mount.path / "other.tmp", "wb") as g:
        f.write(b"new")  # two files still being written
        g.write(b"other")
        for target in ("taken.txt", "folder", "taken.txt.meta.json", "other.tmp"):
            assert renameat2(mount.path / "open.tmp", mount.path / target,
                             RENAME_NOREPLACE) == errno.EEXIST, target
        assert renameat2(mount.path / "open.tmp", mount.path / "free.txt",
                         RENAME_NOREPLACE) == 0
    assert sorted(remote_files(sdk)) == ["free.txt", "other.tmp", "taken.txt"]
    assert_uploaded(sdk, "taken.txt", b"keep")
    assert_uploaded(sdk, "free.txt", b"new")
    assert_uploaded(sdk, "other.tmp", b"other")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (2, 0)


def test_no_trash_folder_at_the_top(mount, admin):
    admin.reset_stats()
    for name in (".Trash", ".Trash-0", ".Trash-1000"):
        proc = mount.sh(f"mkdir {name}", check=False)
        assert proc.returncode == 1 and "Operation not permitted" in proc.stderr, name
    mount.sh("mkdir .Trash-x sub && mkdir sub/.Trash-0")  # only the XDG names, only at the top
    assert sorted(os.listdir(mount.path)) == [".Trash-x", "sub"]
    assert os.listdir(mount.path / "sub") == [".Trash-0"]
    assert admin.stats()["upload_start"] == 0
