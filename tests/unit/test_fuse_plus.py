"""fuse_plus.py's feature detection, and that its READDIRPLUS backport does what the patch
offered to mfusepy (contrib/mfusepy-readdirplus/mfusepy.patch) does: the same filler calls for
the same operations, so swapping one for the other changes nothing for GemFS.

The patched mfusepy is built here from the installed mfusepy.py and the patch (`git apply`), so
this also fails when the patch no longer applies to the mfusepy that gemfs pins.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import mfusepy
import pytest

from gemfs import fuse_plus
from gemfs.fuse_plus import FUSE_FILL_DIR_PLUS, FUSE_READDIR_PLUS

PATCH = Path(__file__).resolve().parents[2] / "contrib" / "mfusepy-readdirplus" / "mfusepy.patch"


def fake_mfusepy(readdir_plus=None) -> types.ModuleType:
    """A module shaped like mfusepy, whose Operations has `readdir_plus` if given."""
    module = types.ModuleType("fake_mfusepy")
    module.FUSE = type("FUSE", (), {})
    module.Operations = type("Operations", (), {} if readdir_plus is None else
                             {"readdir_plus": readdir_plus})
    return module


def has_backport(cls: type) -> bool:
    return fuse_plus._ReaddirPlusBackport in cls.__mro__


# The backport on the installed mfusepy, whether or not the mount uses it.
BACKPORT = type("Backport", (fuse_plus._ReaddirPlusBackport, mfusepy.FUSE), {})


def test_an_mfusepy_without_readdir_plus_gets_the_backport():
    module = fake_mfusepy()
    assert not fuse_plus.has_readdir_plus(module)
    assert has_backport(fuse_plus.fuse_class(module))


def test_an_mfusepy_with_the_offered_readdir_plus_gets_none():
    def readdir_plus(self, path, offset, fh):
        return []

    module = fake_mfusepy(readdir_plus)
    assert fuse_plus.has_readdir_plus(module)
    cls = fuse_plus.fuse_class(module)
    assert not has_backport(cls)
    assert cls.__mro__[-2] is module.FUSE  # the renameat2 and direct I/O overrides stay
    assert "rename_fuse_3" in dir(cls) and "readdir_fuse_3" not in dir(cls)


def test_a_readdir_plus_of_another_shape_is_not_taken_for_ours():
    def readdir_plus(self, path, fh, offset):  # GemFS's would get fh for offset
        return []

    module = fake_mfusepy(readdir_plus)
    assert not fuse_plus.has_readdir_plus(module)
    assert has_backport(fuse_plus.fuse_class(module))


def test_the_running_mfusepy_decides_the_mount_class():
    assert has_backport(fuse_plus.PlusFUSE) != fuse_plus.has_readdir_plus(mfusepy)
    assert fuse_plus.PlusFUSE.__mro__[-2] is mfusepy.FUSE


@pytest.fixture(scope="module")
def patched_mfusepy(tmp_path_factory) -> types.ModuleType:
    """The installed mfusepy.py with the patch's mfusepy.py part applied, as its own module."""
    if fuse_plus.has_readdir_plus(mfusepy):
        pytest.skip("the installed mfusepy has readdir_plus itself: delete the backport")
    if shutil.which("git") is None:
        pytest.skip("git is needed to apply the patch")
    directory = tmp_path_factory.mktemp("mfusepy")
    shutil.copy(mfusepy.__file__, directory / "mfusepy.py")
    subprocess.run(["git", "apply", "--include=mfusepy.py", str(PATCH)], cwd=directory,
                   check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("mfusepy_patched", directory / "mfusepy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses and type hints look themselves up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_the_patched_mfusepy_is_detected_and_needs_no_backport(patched_mfusepy):
    assert fuse_plus.has_readdir_plus(patched_mfusepy)
    assert not has_backport(fuse_plus.fuse_class(patched_mfusepy))
    # The constants fuse_plus.py keeps for itself are the patch's.
    for name in ("FUSE_READDIR_PLUS", "FUSE_FILL_DIR_PLUS", "FUSE_CAP_READDIRPLUS",
                 "FUSE_CAP_READDIRPLUS_AUTO"):
        assert getattr(patched_mfusepy, name) == getattr(fuse_plus, name)


class Listing:
    """Operations with a directory of five entries, as GemFS gives them: '.', '..' and a
    sidecar without attributes, two Files with full attributes, offsets 1..5."""

    use_ns = True
    ENTRIES = [
        (".", None, 1),
        ("..", None, 2),
        ("a.txt", {"st_mode": 0o100644, "st_nlink": 1, "st_size": 3, "st_mtime": 7 * 10**9,
                   "st_uid": 1000}, 3),
        ("a.txt.gemini.json", None, 4),
        ("b", {"st_mode": 0o40755, "st_nlink": 2, "st_size": 0, "st_mtime": 9 * 10**9}, 5),
    ]

    def __init__(self):
        self.calls = []

    def readdir_plus(self, path, offset, fh):
        self.calls.append((path, offset, fh))
        return iter(self.ENTRIES[offset:])


def fill(fuse_cls: type, offset: int, flags: int, room: int = 100):
    """One readdir request through `fuse_cls` (not mounted): what reached the filler, and the
    operations' calls. The filler says the buffer is full after `room` entries."""
    fuse = object.__new__(fuse_cls)
    fuse.operations, fuse.encoding, fuse.errors, fuse.use_ns = Listing(), "utf-8", "strict", True
    fip = types.SimpleNamespace(contents=types.SimpleNamespace(fh=42))
    got = []

    def filler(buf, name, st, off, fill_flags):
        attrs = None if st is None else (st.st_mode, st.st_size, st.st_nlink, st.st_uid,
                                         st.st_mtimespec.tv_sec)
        got.append((name, attrs, off, fill_flags))
        return 1 if len(got) > room else 0

    assert fuse.readdir_fuse_3(b"/d", None, filler, offset, fip, flags) == 0
    return got, fuse.operations.calls


@pytest.mark.parametrize("offset, flags, room", [
    (0, FUSE_READDIR_PLUS, 100),  # READDIRPLUS from the start
    (3, FUSE_READDIR_PLUS, 100),  # a request that continues after entry 3
    (0, FUSE_READDIR_PLUS, 2),  # the kernel's buffer is full after 3 entries
    (0, 0, 100),  # plain READDIR: names and types only
])
def test_the_backport_fills_as_the_patched_mfusepy_does(patched_mfusepy, offset, flags, room):
    backport, backport_calls = fill(BACKPORT, offset, flags, room)
    patched, patched_calls = fill(fuse_plus.fuse_class(patched_mfusepy), offset, flags, room)
    assert backport == patched
    assert backport_calls == patched_calls == [("/d", offset, 42)]


def test_what_the_backport_hands_the_kernel():
    plus, _ = fill(BACKPORT, 0, FUSE_READDIR_PLUS)
    assert plus == [
        (b".", None, 1, 0),
        (b"..", None, 2, 0),
        (b"a.txt", (0o100644, 3, 1, 1000, 7), 3, FUSE_FILL_DIR_PLUS),
        (b"a.txt.gemini.json", None, 4, 0),
        (b"b", (0o40755, 0, 2, 0, 9), 5, FUSE_FILL_DIR_PLUS),
    ]
    resumed, calls = fill(BACKPORT, 3, FUSE_READDIR_PLUS)
    assert [name for name, *_ in resumed] == [b"a.txt.gemini.json", b"b"] and calls[0][1] == 3
    plain, _ = fill(BACKPORT, 0, 0)
    assert [(name, attrs and attrs[:2], flags) for name, attrs, _, flags in plain][2:] == [
        (b"a.txt", (0o100644, 0), 0), (b"a.txt.gemini.json", None, 0), (b"b", (0o40755, 0), 0)]
    full, _ = fill(BACKPORT, 0, FUSE_READDIR_PLUS, room=2)
    assert len(full) == 3  # the third entry did not fit: nothing after it was offered
