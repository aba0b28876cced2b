"""The store and the wire helpers in-process: paging under concurrent change (property-based),
page tokens, crash recovery of upload sessions, id reuse, orphans, and File rendering."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemfs.server import store as store_mod
from gemfs.server import wire
from gemfs.server.store import Clock, DataDirBusy, Limits, SessionGone, Store

PROJECT = "p" * 64


class FakeTime:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(tmp_path: Path, fake_time: FakeTime):
    s = Store(tmp_path / "data", clock=Clock(fake_time))
    yield s
    s.close()


def upload(
    store: Store,
    data: bytes,
    *,
    project: str = PROJECT,
    mime: str = "text/plain",
    name: str | None = None,
):
    _, session = store.start_upload(
        project, name=name, display_name=None, mime_type=mime, size=len(data)
    )
    writer = store.begin_chunk(session)
    writer.write(data)
    session = writer.commit(0)
    return store.finalize_upload(session)


# --- paging ------------------------------------------------------------------------------------


def list_all(store: Store, page_size: int, between_pages=lambda seen: None) -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page, more = store.list_files(PROJECT, page_size, after)
        assert page or not more, "an empty page must not promise more"
        seen += [r.id for r in page]
        if not more:
            return seen
        token = wire.encode_page_token(page[-1].create_us, page[-1].id)
        after = wire.decode_page_token(token)
        between_pages(seen)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.integers(0, 25),
    page_size=st.integers(1, 7),
    changes=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=12),
)
def test_paging_under_changes(tmp_path_factory, initial: int, page_size: int, changes) -> None:
    """Files present for the whole walk appear exactly once, in newest-first order, whatever
    is created or deleted between pages; no File deleted before it was reached appears."""
    fake = FakeTime()
    s = Store(tmp_path_factory.mktemp("paging"), clock=Clock(fake))
    try:
        for i in range(initial):
            fake.now += 0.001 * (i % 2)  # some Files share a clock tick
            upload(s, b"%d" % i)
        before = [r.id for r in s.list_files(PROJECT, 1000)[0]]
        deleted: set[str] = set()
        deleted_unseen: set[str] = set()
        created: set[str] = set()
        pending = list(changes)

        def mutate(seen_so_far: list[str]) -> None:
            if not pending:
                return
            create, pick = pending.pop(0)
            live = [r.id for r in s.list_files(PROJECT, 1000)[0]]
            if create or not live:
                created.add(upload(s, b"new").id)
            else:
                victim = live[pick % len(live)]
                s.delete_file(PROJECT, victim)
                deleted.add(victim)
                if victim not in seen_so_far:
                    deleted_unseen.add(victim)

        seen = list_all(s, page_size, mutate)
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(before) | created
        assert not set(seen) & deleted_unseen
        # Every File that existed throughout appears, and the walk keeps the initial order.
        assert [i for i in seen if i in before] == [i for i in before if i not in deleted_unseen]
    finally:
        s.close()


@given(st.integers(0, 2**62), st.from_regex(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True))
def test_page_token_roundtrip(create_us: int, file_id: str) -> None:
    token = wire.encode_page_token(create_us, file_id)
    assert "=" not in token and "/" not in token and "+" not in token
    assert wire.decode_page_token(token) == (create_us, file_id)


@given(st.text(max_size=80))
def test_arbitrary_page_tokens_are_rejected_or_valid(token: str) -> None:
    try:
        create_us, file_id = wire.decode_page_token(token)
    except wire.InvalidPageToken:
        return
    assert create_us >= 0 and file_id


# --- upload sessions ---------------------------------------------------------------------------


def test_session_resumes_from_recorded_bytes_only(tmp_path: Path, fake_time: FakeTime) -> None:
    data = os.urandom(5000)
    s = Store(tmp_path, clock=Clock(fake_time))
    token, session = s.start_upload(
        PROJECT, name=None, display_name="r", mime_type="a/b", size=5000
    )
    w = s.begin_chunk(session)
    w.write(data[:2000])
    w.commit(0)
    # A chunk whose bytes reached the disk but whose commit never happened (crash).
    w = s.begin_chunk(s.get_session(token))
    w.write(b"garbage that must not count")
    w._file.close()
    s.close()

    s = Store(tmp_path, clock=Clock(fake_time))
    try:
        session = s.get_session(token)
        assert session.received == 2000 and session.last_offset == 0 and session.last_length == 2000
        w = s.begin_chunk(session)
        w.write(data[2000:])
        rec = s.finalize_upload(w.commit(2000))
        assert rec.sha256_hex == hashlib.sha256(data).hexdigest()
        assert rec.display_name == "r" and rec.size_bytes == 5000
    finally:
        s.close()


def test_session_with_lost_bytes_is_gone(tmp_path: Path) -> None:
    s = Store(tmp_path)
    token, session = s.start_upload(PROJECT, name=None, display_name=None, mime_type="a/b", size=10)
    w = s.begin_chunk(session)
    w.write(b"12345")
    w.commit(0)
    s.close()
    s = Store(tmp_path)
    try:
        partial = next((tmp_path / "uploads").iterdir())
        partial.write_bytes(b"12")  # shorter than the row says
        with pytest.raises(SessionGone):
            s.begin_chunk(s.get_session(token))
    finally:
        s.close()


def test_discarded_chunk_leaves_session_unchanged(store: Store) -> None:
    token, session = store.start_upload(
        PROJECT, name=None, display_name=None, mime_type="a/b", size=6
    )
    w = store.begin_chunk(session)
    w.write(b"abc")
    session = w.commit(0)
    w = store.begin_chunk(session)
    w.write(b"XYZ")
    w.discard()
    w = store.begin_chunk(store.get_session(token))
    w.write(b"def")
    rec = store.finalize_upload(w.commit(3))
    assert rec.sha256_hex == hashlib.sha256(b"abcdef").hexdigest()


def test_overflow_is_refused_before_writing(store: Store) -> None:
    _, session = store.start_upload(PROJECT, name=None, display_name=None, mime_type="a/b", size=3)
    w = store.begin_chunk(session)
    with pytest.raises(store_mod.Overflow):
        w.write(b"abcd")
    assert w.written == 0
    w.discard()


def test_sessions_expire_after_seven_days(store: Store, fake_time: FakeTime) -> None:
    token, _ = store.start_upload(PROJECT, name=None, display_name=None, mime_type="a/b", size=100)
    assert store.usage(PROJECT) == 100
    fake_time.now += 7 * 24 * 3600 + 1
    assert store.get_session(token) is None
    assert store.usage(PROJECT) == 0
    assert store.sweep() == {"files": 0, "sessions": 1}


# --- ids, orphans, locking ---------------------------------------------------------------------


def test_random_ids_are_never_reused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first = upload(store, b"a")
    store.delete_file(PROJECT, first.id)
    # Make the generator propose the deleted id first, then something else.
    proposals = iter(list(first.id) + list("zzzzzzzzzzzz"))
    monkeypatch.setattr(store_mod.secrets, "choice", lambda alphabet: next(proposals))
    assert upload(store, b"b").id == "zzzzzzzzzzzz"


def test_orphans_removed_at_open(tmp_path: Path) -> None:
    s = Store(tmp_path)
    kept = upload(s, b"keep")
    s.close()
    (tmp_path / "blobs" / "stray").write_bytes(b"x")
    (tmp_path / "uploads" / "stray").write_bytes(b"x")
    s = Store(tmp_path)
    try:
        assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [kept.blob]
        assert list((tmp_path / "uploads").iterdir()) == []
        assert s.get_file(PROJECT, kept.id) == kept
    finally:
        s.close()


def test_one_store_per_directory(store: Store) -> None:
    with pytest.raises(DataDirBusy):
        Store(store.root)


def test_clock_only_moves_forward() -> None:
    clock = Clock(lambda: 100.0)
    clock.advance(5)
    assert clock() == 105.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_creation_times_strictly_increase(store: Store) -> None:
    recs = [upload(store, b"%d" % i) for i in range(5)]  # the fake clock stands still
    assert [r.create_us for r in recs] == list(range(recs[0].create_us, recs[0].create_us + 5))


def test_expired_name_can_be_reused(tmp_path: Path, fake_time: FakeTime) -> None:
    s = Store(tmp_path, limits=Limits(file_ttl_seconds=10), clock=Clock(fake_time))
    try:
        old = upload(s, b"old", name="report")
        fake_time.now += 11
        assert s.get_file(PROJECT, "report") is None
        new = upload(s, b"new", name="report")  # the expired row is replaced, its blob removed
        assert new.blob != old.blob
        assert not (tmp_path / "blobs" / old.blob).exists()
    finally:
        s.close()


# --- rendering ---------------------------------------------------------------------------------


def test_file_resource_rules(store: Store, fake_time: FakeTime) -> None:
    rec = upload(store, b"", mime="video/mp4")
    out = wire.file_resource(rec, store.now_us())
    assert "sizeBytes" not in out and "displayName" not in out and "downloadUri" not in out
    assert out["state"] == "PROCESSING" and out["updateTime"] == out["createTime"]
    fake_time.now += 2
    out = wire.file_resource(rec, store.now_us())
    assert out["state"] == "ACTIVE" and out["updateTime"] > out["createTime"]


def test_timestamps() -> None:
    assert wire.timestamp_us(1_724_660_696_068_012) == "2024-08-26T08:24:56.068012Z"
    assert wire.timestamp_ns(1_724_833_496_049_455_995) == "2024-08-28T08:24:56.049455995Z"
    assert wire.timestamp_us(0) == "1970-01-01T00:00:00.000000Z"


def test_sha256_field_matches_real_sample() -> None:
    # From the wire doc §3.2 (REAL R1): base64 of the lower-case hex digest.
    hex_digest = "f78f39603e6774907f2faafabf26a667f4a6fc31769ec304a8a8f7c62d280508"
    assert wire.sha256_field(hex_digest) == (
        "Zjc4ZjM5NjAzZTY3NzQ5MDdmMmZhYWZhYmYyNmE2NjdmNGE2ZmMzMTc2OWVjMzA0YThhOGY3YzYyZDI4MDUwOA=="
    )


@given(st.integers(-(2**31), 2**31))
def test_page_size_clamp(requested: int) -> None:
    size = wire.clamp_page_size(requested)
    assert 1 <= size <= 100
    assert size == (10 if requested <= 0 else min(requested, 100))


def test_schema_1_is_migrated(tmp_path: Path, fake_time: FakeTime) -> None:
    """A data directory of the previous version keeps its Files and can hold failed ones."""
    import sqlite3

    root = tmp_path / "data"
    root.mkdir()
    db = sqlite3.connect(root / "gemfs.sqlite3")
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE files (
            project TEXT NOT NULL, id TEXT NOT NULL, display_name TEXT, mime_type TEXT NOT NULL,
            size_bytes INTEGER NOT NULL, sha256_hex TEXT, create_us INTEGER NOT NULL,
            ready_us INTEGER NOT NULL, expire_us INTEGER NOT NULL, source TEXT NOT NULL,
            blob TEXT, PRIMARY KEY (project, id));
        """
    )
    now = int(fake_time.now * 1e6)
    db.execute(
        "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (PROJECT, "old", "kept", "video/mp4", 0, None, now, now + 10**6, now + 10**12,
         "UPLOADED", None),
    )
    db.commit()
    db.close()
    s = Store(root, clock=Clock(fake_time))
    try:
        rec = s.get_file(PROJECT, "old")
        assert rec is not None and rec.display_name == "kept" and rec.error_code is None
        failed = s.fail_file(PROJECT, "old", 3, "bad")
        assert failed is not None
        out = wire.file_resource(failed, s.now_us())
        assert (out["state"], out["error"]) == ("FAILED", {"code": 3, "message": "bad"})
        assert s.fail_file(PROJECT, "missing", 3, "bad") is None
    finally:
        s.close()
    s = Store(root, clock=Clock(fake_time))  # and opens again as the new version
    s.close()
