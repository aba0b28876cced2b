"""The catalog's naming rules, collisions, expiry and refresh, with a fake clock and listing."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemfs.catalog import Catalog, DirNode, FileNode, Tree, split_path, suffixed, wanted_path
from gemfs.model import FileRecord


def rec(fid, display=None, mime="text/plain", size=1, created=100.0, expires=0.0):
    api = {"name": f"files/{fid}", "mimeType": mime, "sizeBytes": str(size)}
    if display is not None:
        api["displayName"] = display
    return FileRecord(id=fid, display_name=display, mime_type=mime, size=size, create_time=created,
                      update_time=created, expiration_time=expires, state="ACTIVE",
                      source="UPLOADED", download_uri=None, api=api)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def names(tree: Tree, path=()):
    return sorted(tree.dirs[path])


def test_display_names_make_a_tree():
    tree = Tree([rec("a1", "reports/q3.pdf"), rec("a2", "reports/2024/q4.pdf"), rec("a3", "top.txt")], [])
    assert names(tree) == ["reports", "top.txt"]
    assert names(tree, ("reports",)) == ["2024", "q3.pdf"]
    assert isinstance(tree.lookup(("reports", "2024")), DirNode)
    assert tree.lookup(("reports", "2024", "q4.pdf")).record.id == "a2"


def test_file_without_display_name_is_id_plus_extension():
    assert wanted_path(rec("x27lu0k9zc2k", None, mime="audio/mpeg")) == ("x27lu0k9zc2k.mp3",)
    assert wanted_path(rec("abc", None, mime="application/x-unknown-thing")) == ("abc",)
    # Only slashes: no component left, so the id is the name.
    assert wanted_path(rec("abc", "//", mime="text/plain")) == ("abc.txt",)


@pytest.mark.parametrize(
    "display, expected",
    [
        ("a//b", ("a", "b")),
        ("/lead", ("lead",)),
        ("..", ("%2E%2E",)),
        ("../etc/passwd", ("%2E%2E", "etc", "passwd")),
        ("./x", ("%2E", "x")),
        ("line\nbreak", ("line%0Abreak",)),
        ("nul\x00byte", ("nul%00byte",)),
        ("tab\there", ("tab%09here",)),
        ("emoji 🎵.mp3", ("emoji 🎵.mp3",)),
    ],
)
def test_hostile_components_are_escaped(display, expected):
    path = wanted_path(rec("id1", display))
    assert path == expected
    for part in path:
        assert part not in (".", "..") and "/" not in part and "\x00" not in part


def test_long_components_are_cut_stably_and_apart():
    long_a = "a" * 300 + ".txt"
    long_b = "a" * 300 + "b.txt"
    pa, pb = wanted_path(rec("i1", long_a)), wanted_path(rec("i2", long_b))
    for p in (pa, pb):
        assert len(p[-1].encode()) <= 255
        assert p[-1].endswith(".txt")
    assert pa != pb
    assert pa == wanted_path(rec("i3", long_a))  # stable
    multibyte = "é" * 200  # 400 bytes
    cut = wanted_path(rec("i4", multibyte))[-1]
    assert len(cut.encode()) <= 255
    cut.encode("utf-8")  # no half character


def test_255_byte_name_is_kept_as_is():
    name = "n" * 251 + ".bin"
    assert wanted_path(rec("i1", name)) == (name,)


def test_duplicates_oldest_keeps_plain_name():
    tree = Tree([rec("new111", "song.mp3", created=300), rec("old111", "song.mp3", created=100),
                 rec("mid111", "song.mp3", created=200)], [])
    assert names(tree) == ["song.mp3", "song~mid111.mp3", "song~new111.mp3"]
    assert tree.lookup(("song.mp3",)).record.id == "old111"


def test_file_and_directory_of_the_same_name():
    tree = Tree([rec("f1", "a"), rec("f2", "a/b")], [])
    assert isinstance(tree.lookup(("a",)), DirNode)
    assert tree.lookup(("a~f1",)).record.id == "f1"


def test_file_named_like_a_sidecar_of_a_neighbour_is_suffixed():
    tree = Tree([rec("f1", "x"), rec("f2", "x.meta.json")], [])
    assert tree.lookup(("x",)).record.id == "f1"
    assert tree.lookup(("x.meta.json",)) is None
    assert tree.lookup(("x.meta~f2.json",)).record.id == "f2"
    # Without a neighbour called x, the name is free.
    alone = Tree([rec("f2", "x.meta.json")], [])
    assert alone.lookup(("x.meta.json",)).record.id == "f2"


def test_suffixed_keeps_extension_and_limit():
    assert suffixed("song.mp3", "abc") == "song~abc.mp3"
    assert suffixed("noext", "abc") == "noext~abc"
    assert len(suffixed("z" * 255, "abcdefghijkl").encode()) <= 255


def test_local_directories():
    tree = Tree([], [("made", "deep")])
    assert isinstance(tree.lookup(("made",)), DirNode)
    assert names(tree, ("made",)) == ["deep"]


def make_catalog(records, clock, ttl=10.0):
    calls = []
    state = {"records": records}

    def fetch():
        calls.append(clock())
        return list(state["records"])

    cat = Catalog(fetch, ttl=ttl, clock=clock)
    return cat, calls, state


def test_first_access_waits_for_a_listing_and_ttl_refreshes_in_background():
    clock = Clock()
    cat, calls, state = make_catalog([rec("a1", "one")], clock)
    assert cat.lookup(("one",)).record.id == "a1"
    assert len(calls) == 1
    state["records"] = [rec("a1", "one"), rec("b2", "two")]
    clock.t += 5
    assert cat.lookup(("two",)) is None  # inside the TTL: no new call
    assert len(calls) == 1
    clock.t += 6
    cat.lookup(("one",))  # stale: serves the old snapshot, refreshes behind
    assert cat.wait_idle(5)
    assert len(calls) == 2
    assert cat.lookup(("two",)).record.id == "b2"


def test_failed_refresh_keeps_old_snapshot():
    clock = Clock()
    cat, calls, state = make_catalog([rec("a1", "one")], clock, ttl=1)
    cat.lookup(())
    state["records"] = None  # list() of None raises TypeError inside fetch

    clock.t += 2
    assert cat.lookup(("one",)).record.id == "a1"
    assert cat.wait_idle(5)
    assert cat.lookup(("one",)).record.id == "a1"
    assert cat.stats()["last_error"]


def test_expired_files_vanish_at_expiration_time_without_a_listing():
    clock = Clock(1000)
    cat, calls, _ = make_catalog([rec("a1", "soon", expires=1005), rec("b2", "later", expires=5000)],
                                 clock, ttl=10_000)
    assert cat.lookup(("soon",)) is not None
    clock.t = 1005
    assert cat.lookup(("soon",)) is None
    assert cat.lookup(("later",)) is not None
    assert len(calls) == 1


def test_own_uploads_and_deletes_show_at_once_and_settle():
    clock = Clock(1000)
    cat, calls, state = make_catalog([rec("a1", "one")], clock, ttl=10)
    cat.lookup(())
    clock.t = 1001
    cat.add_uploaded(rec("n1", "new"))
    cat.mark_deleted("a1")
    assert cat.lookup(("new",)).record.id == "n1"
    assert cat.lookup(("one",)) is None
    # A listing that began before the upload and delete does not undo them.
    cat.install([rec("a1", "one")], fetched_at=1000.5)
    assert cat.lookup(("new",)) is not None and cat.lookup(("one",)) is None
    # One that began after them is the truth.
    cat.install([rec("n1", "new")], fetched_at=1002)
    assert cat.lookup(("new",)).record.id == "n1" and cat.lookup(("one",)) is None
    assert cat.used_bytes() == 1


def test_concurrent_readers_during_refresh():
    clock = Clock()
    records = [rec(f"id{i:04d}", f"d{i % 10}/f{i}") for i in range(2000)]
    cat, calls, state = make_catalog(records, clock, ttl=0.0)
    errors = []

    def reader():
        try:
            for i in range(300):
                node = cat.lookup(("d3", "f3"))
                assert isinstance(node, FileNode)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cat.wait_idle(10)


def test_split_path():
    assert split_path("/") == ()
    assert split_path("/a/b/") == ("a", "b")


def _walk(cat: Catalog, path=()) -> dict:
    """What the mount shows: every directory's entries, by name, as (kind, File id)."""
    view = {}
    entries = cat.listdir(path)
    view[path] = {n: (type(node).__name__, getattr(getattr(node, "record", None), "id", None))
                  for n, node in entries.items()}
    for name, node in entries.items():
        if isinstance(node, DirNode):
            view.update(_walk(cat, path + (name,)))
    return view


def _rebuilt(records) -> dict:
    tree = Tree(records, [])
    return {d: {n: (type(node).__name__, getattr(getattr(node, "record", None), "id", None))
                for n, node in entries.items()} for d, entries in tree.dirs.items()}


_COMPONENTS = ["a", "b", "a.meta.json", "c.txt", "c.txt.meta.json", "c~id01.txt", "."]


@settings(max_examples=300, deadline=None)
@given(displays=st.lists(st.one_of(st.none(), st.lists(st.sampled_from(_COMPONENTS), min_size=1,
                                                         max_size=3).map("/".join)),
                         min_size=1, max_size=12),
       listed=st.integers(min_value=0, max_value=12))
def test_own_uploads_added_in_place_match_a_rebuild(displays, listed):
    # Each upload is put into the tree in place when it can be (Tree.try_add): the result must
    # be exactly the tree a rebuild from all Files gives, whatever names collide.
    records = [rec(f"id{i:02d}", d, size=i + 1, created=100.0 + i) for i, d in enumerate(displays)]
    clock = Clock(1000)
    cat, _, _ = make_catalog(records[:listed], clock, ttl=10_000)
    cat.lookup(())
    for i, record in enumerate(records[listed:], start=listed):
        cat.add_uploaded(record)
        live = records[: i + 1]
        assert _walk(cat) == _rebuilt(live)
        assert all(cat.path_of(r.id) == Tree(live, []).paths[r.id] for r in live)
        assert cat.used_bytes() == sum(r.size for r in live)


@settings(max_examples=300, deadline=None)
@given(displays=st.lists(st.one_of(st.none(), st.lists(st.sampled_from(_COMPONENTS), min_size=1,
                                                         max_size=3).map("/".join)),
                         min_size=1, max_size=12),
       order=st.randoms(use_true_random=False),
       local=st.sampled_from([[], [("a",)], [("b", "a")]]))
def test_deletes_taken_out_in_place_match_a_rebuild(displays, order, local):
    # Each delete is taken out of the tree in place when it can be (Tree.try_remove): the
    # result must be exactly the tree a rebuild from the Files left gives, whatever collided.
    records = [rec(f"id{i:02d}", d, size=i + 1, created=100.0 + i) for i, d in enumerate(displays)]
    cat, _, _ = make_catalog(records, Clock(1000), ttl=10_000)
    for path in local:
        cat.add_dir(path)
    cat.lookup(())
    live = list(records)
    order.shuffle(live)
    while live:
        gone = live.pop()
        cat.mark_deleted(gone.id)
        want = Tree(live, local)
        assert _walk(cat) == {d: {n: (type(node).__name__, getattr(getattr(node, "record", None), "id", None))
                                  for n, node in entries.items()} for d, entries in want.dirs.items()}
        assert all(cat.path_of(r.id) == want.paths[r.id] for r in live)
        assert cat.used_bytes() == sum(r.size for r in live)
