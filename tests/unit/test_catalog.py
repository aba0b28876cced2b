"""The catalog's naming rules, collisions, expiry and refresh, with a fake clock and listing."""

import errno
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gemfs.catalog import (
    DISPLAY_NAME_MAX,
    Catalog,
    DirNode,
    FileNode,
    Tree,
    decode_component,
    display_name,
    display_name_for,
    escape_component,
    split_path,
    suffixed,
    wanted_path,
)
from gemfs.errors import GemfsError
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
        ("line\nbreak", ("line\nbreak",)),  # a Linux name can hold it: ls quotes it itself
        ("nul\x00byte", ("nul%00byte",)),
        ("tab\there", ("tab\there",)),
        ("lone\ud800", ("lone%ED%A0%80",)),
        ("100%", ("100%",)),
        ("a%0Ab", ("a%0Ab",)),
        ("%00", ("%2500",)),  # read back as NUL if left as it is
        ("%2E", ("%252E",)),  # read back as '.'
        ("%2E%2E/x", ("%252E%2E", "x")),
        ("x/%2E", ("x", "%252E")),
        ("a%2E", ("a%2E",)),  # '%2E' means '.' only as a whole component
        ("emoji 🎵.mp3", ("emoji 🎵.mp3",)),
    ],
)
def test_hostile_components_are_escaped(display, expected):
    path = wanted_path(rec("id1", display))
    assert path == expected
    for part in path:
        assert part not in (".", "..") and "/" not in part and "\x00" not in part
        part.encode("utf-8")  # strict: no lone surrogate is left
    assert display_name(path) == "/".join(p for p in display.split("/") if p)


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
        want = Tree(live, cat.local_dirs())  # with the folders its deletes emptied
        assert _walk(cat) == {d: {n: (type(node).__name__, getattr(getattr(node, "record", None), "id", None))
                                  for n, node in entries.items()} for d, entries in want.dirs.items()}
        assert all(cat.path_of(r.id) == want.paths[r.id] for r in live)
        assert cat.used_bytes() == sum(r.size for r in live)


# --- names map both ways exactly (docs/SEMANTICS.md, Names) -------------------------------------

# Alphabets rich in what the escapes are made of, so the rare forms (%2500, %25%ED%A0%80,
# %252E%2E) come up often.
_DISPLAY_CHARS = st.sampled_from(list("%25%0EDAB8.\n") + ["\x00", "\ud800", "\udfff", "\udcff",
                                                           "é", "🎵", "x", "%"])
_LOCAL_PIECES = st.sampled_from(["%", "2", "5", "0", "E", "D", "A", "B", "8", "F", ".", "\n",
                                 "%25", "%00", "%2E", "%ED%A0%80", "%ED%BF%BF", "%ED%9F%BF",
                                 "%ed%a0%80", "é", "x"])


def _display_components():
    return st.text(_DISPLAY_CHARS, min_size=1, max_size=12)


@settings(max_examples=1000, deadline=None)
@given(_display_components())
def test_p2_decode_undoes_escape(display):
    local = escape_component(display)
    assert decode_component(local) == display
    assert local not in (".", "..") and "/" not in local and "\x00" not in local
    local.encode("utf-8")  # a name Linux can hold


@settings(max_examples=1000, deadline=None)
@given(_display_components(), _display_components())
def test_p1_escape_is_injective(a, b):
    if a != b:
        assert escape_component(a) != escape_component(b)


@settings(max_examples=1000, deadline=None)
@example("%252E")
@example("%252E%2E")
@example("%25252E%2E")
@example("%2500")
@example("%25%ED%A0%80")
@given(st.lists(_LOCAL_PIECES, min_size=1, max_size=10).map("".join))
def test_p3_a_created_name_is_shown_as_it_was_created(local):
    if local in (".", ".."):
        return
    # Every name a user can create (UTF-8, no '/', no NUL, not '.' or '..') comes back.
    assert escape_component(decode_component(local)) == local


def test_examples_of_both_directions():
    assert escape_component("%00") == "%2500" and decode_component("%2500") == "%00"
    assert escape_component("%%00") == "%%2500"
    assert escape_component("%\x00") == "%%00"
    assert escape_component("%\ud800") == "%%ED%A0%80"
    assert escape_component("%%ED%A0%80") == "%%25ED%A0%80"
    assert decode_component("%2E") == "." and decode_component("%2E%2E") == ".."
    assert decode_component("%252E") == "%2E" and decode_component("%25252E") == "%252E"
    assert decode_component("%2E%2E%2E") == "%2E%2E%2E"  # no whole form: plain
    assert decode_component("a\nb") == "a\nb" and decode_component("a%0Ab") == "a%0Ab"
    # The two names of issue 9 no longer meet.
    assert wanted_path(rec("n1", "a\nb")) != wanted_path(rec("n2", "a%0Ab"))


def test_names_that_cannot_be_created_are_refused_clearly():
    assert display_name_for(("d", "a%0Ab")) == "d/a%0Ab"
    assert display_name_for(("%2E%2E", "x")) == "../x"
    assert display_name_for(("n" * 255,)) == "n" * 255
    with pytest.raises(GemfsError) as too_long:
        display_name_for(("n" * 256,))
    assert too_long.value.errno == errno.ENAMETOOLONG
    with pytest.raises(GemfsError) as multibyte:
        display_name_for(("é" * 128,))  # 256 bytes
    assert multibyte.value.errno == errno.ENAMETOOLONG
    deep = ("d" * 200, "e" * 200, "f" * 110)  # 510 + 2 slashes = 512 characters
    assert len(display_name_for(deep)) == DISPLAY_NAME_MAX
    with pytest.raises(GemfsError) as path_too_long:
        display_name_for(deep[:-1] + ("f" * 111,))
    assert path_too_long.value.errno == errno.ENAMETOOLONG
    # Escapes count as what they stand for: '%00' is one character of the display name.
    assert len(display_name_for(("%00" * 80, "%00" * 80, "%00" * 80))) == 242
    # A folder needs room for '/' and a file name in it.
    with pytest.raises(GemfsError):
        display_name_for(deep, directory=True)
    with pytest.raises(GemfsError) as surrogate:
        display_name_for(("x%ED%A0%80",))
    assert surrogate.value.errno == errno.EINVAL


# --- folder times -------------------------------------------------------------------------------


def rec_at(fid, display, updated):
    return rec(fid, display, created=updated)  # rec() sets updateTime = createTime


def test_folders_take_the_newest_update_time_inside_them():
    tree = Tree([rec_at("f1", "a/b/old", 100), rec_at("f2", "a/b/c/new", 300),
                 rec_at("f3", "a/top", 200), rec_at("f4", "z", 50)], {("made",): 400})
    assert tree.dir_mtime(("a", "b", "c")) == 300
    assert tree.dir_mtime(("a", "b")) == 300
    assert tree.dir_mtime(("a",)) == 300
    assert tree.dir_mtime(("made",)) == 400  # made with mkdir, still empty: its mkdir time
    assert tree.dir_mtime(()) == 400


@settings(max_examples=200, deadline=None)
@given(displays=st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3)
                         .map("/".join), min_size=1, max_size=10),
       times=st.lists(st.integers(1, 50), min_size=10, max_size=10),
       order=st.randoms(use_true_random=False))
def test_folder_times_kept_in_place_match_a_rebuild(displays, times, order):
    records = [rec_at(f"id{i:02d}", d, 100 + times[i]) for i, d in enumerate(displays)]
    cat, _, _ = make_catalog([], Clock(1000), ttl=10_000)
    cat.lookup(())
    live = []
    for r in records:  # uploads, put in place
        cat.add_uploaded(r)
        live.append(r)
        want = Tree(live, cat.local_dirs())
        for d in want.dirs:
            assert cat.dir_mtime(d) == want.dir_mtime(d), d
    order.shuffle(live)
    while live:  # deletes, taken out in place
        cat.mark_deleted(live.pop().id)
        want = Tree(live, cat.local_dirs())
        for d in want.dirs:
            assert cat.dir_mtime(d) == want.dir_mtime(d), d


# --- rm -r: folders emptied here stay until rmdir --------------------------------------------------


def test_a_folder_emptied_by_this_mount_stays_until_rmdir():
    clock = Clock(1000)
    cat, _, _ = make_catalog([rec("f1", "a/b/c/x"), rec("f2", "a/b/c/y"), rec("f3", "keep/z")],
                             clock)
    cat.lookup(())
    cat.mark_deleted("f1")
    assert cat.local_dirs() == {}  # c still holds y
    clock.t = 1001
    cat.mark_deleted("f2")
    assert cat.listdir(("a", "b", "c")) == {}  # emptied, still there
    assert cat.local_dirs() == {("a", "b", "c"): 1001}
    assert cat.dir_mtime(("a", "b", "c")) == 1001
    # rmdir of each level leaves the next one up standing until it is rmdir'd too.
    for depth in (3, 2, 1):
        path = ("a", "b", "c")[:depth]
        assert cat.listdir(path) == {}
        cat.remove_dir(path)
        assert cat.lookup(path) is None
    assert sorted(cat.listdir(())) == ["keep"]
    assert cat.local_dirs() == {}
    # Another client's delete or an expiry does not keep anything.
    cat.install([], fetched_at=2000)
    assert cat.listdir(()) == {}


def test_emptied_folder_is_kept_even_when_the_tree_is_stale():
    clock = Clock(1000)
    cat, _, _ = make_catalog([rec("f1", "d/x"), rec("f2", "e/y"), rec("f3", "e/z")], clock)
    cat.lookup(())
    cat.install([rec("f1", "d/x"), rec("f2", "e/y"), rec("f3", "e/z"), rec("f4", "new")], 1000)
    cat.mark_deleted("f1")  # no tree right after a listing: found by a scan
    cat.mark_deleted("f2")
    assert cat.local_dirs() == {("d",): 1000}
    assert cat.listdir(("d",)) == {} and list(cat.listdir(("e",))) == ["z"]


def test_a_suffixed_name_still_resolves_after_its_collision_is_gone():
    # rm -rf of a folder `a` (File a/b) and a File `a`, shown as `a~f1` beside it.
    clock = Clock(1000)
    cat, _, _ = make_catalog([rec("f1", "a", created=50), rec("f2", "a/b")], clock)
    assert sorted(cat.listdir(())) == ["a", "a~f1"]
    cat.mark_deleted("f2")
    cat.remove_dir(("a",))
    assert cat.lookup(("a",)).record.id == "f1"  # its plain name is free now
    assert cat.lookup(("a~f1",)).record.id == "f1"  # and the name rm listed still works
    assert cat.lookup(("a~f2",)) is None and cat.lookup(("a~nope",)) is None
    assert cat.lookup(("b~f1",)) is None  # only its own suffixed name
    assert sorted(cat.listdir(())) == ["a"]


def test_an_identical_listing_keeps_the_tree():
    clock = Clock(1000)
    records = [rec("a1", "x/one"), rec("b2", "two")]
    cat, _, _ = make_catalog(records, clock)
    cat.lookup(())
    tree = cat._tree
    cat.install([rec("a1", "x/one"), rec("b2", "two")], fetched_at=1001)
    assert cat._tree is tree
    changed = rec("b2", "two", size=5)
    cat.install([rec("a1", "x/one"), changed], fetched_at=1002)
    assert cat._tree is None
    assert cat.lookup(("two",)).record.size == 5


def test_a_rebuild_runs_outside_the_lock(monkeypatch):
    # While one thread rebuilds the tree (O(all Files)), what needs only the lock goes on: the
    # quota check of every write (used_bytes), an upload or delete recorded, stats.
    import gemfs.catalog as catalog_module

    building, finish = threading.Event(), threading.Event()

    class SlowTree(catalog_module.Tree):
        def __init__(self, *args, **kwargs):
            building.set()
            finish.wait(60)
            super().__init__(*args, **kwargs)

    cat, _, _ = make_catalog([rec("a1", "one", size=7)], Clock(1000), ttl=10_000)
    monkeypatch.setattr(catalog_module, "Tree", SlowTree)
    reader = threading.Thread(target=lambda: cat.lookup(("one",)))
    reader.start()
    assert building.wait(60)
    answered = threading.Event()

    def others():
        assert cat.used_bytes() == 7
        cat.add_uploaded(rec("b2", "two", size=3))
        assert cat.stats()["files"] == 2
        answered.set()

    side = threading.Thread(target=others)
    side.start()
    # Deadlock detector, not a speed check: before, these waited for the build to end.
    assert answered.wait(60), "a rebuild held the catalog lock"
    finish.set()
    reader.join()
    side.join()
    assert cat.lookup(("two",)).record.id == "b2"  # the upload made meanwhile is not lost
