"""Fixtures shared by every test folder (local Files API servers and SDK clients for them), and
the session hooks: the reliability tally (tests/tally.py) summed over pytest-xdist's workers,
the heavy tests first, and what keeps a worker's CPU down (the garbage collector around
collection, make test's warm-up of hypothesis's caches)."""

from __future__ import annotations

import gc
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DEFAULT_KEYS, ServerProcess, shared_default_context
from tests.tally import TALLY

KEY_A, KEY_B = DEFAULT_KEYS

# One TLS context per set of arguments in the test processes: SDK and httpx clients of the
# plain-http test servers need none of their own (tests/helpers.shared_default_context).
ssl.create_default_context = shared_default_context


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh `gemfs serve --admin` with keys "key-a" and "key-b", data under tmp_path."""
    with ServerProcess(tmp_path / "server", keys=DEFAULT_KEYS) as srv:
        yield srv


def servers(tmp_path: Path, cls: type) -> Iterator[Callable[..., object]]:
    """The body of every server factory fixture: `make(args=[...], **kwargs)` starts a `cls`
    (ServerProcess or InProcessServer) on its own data directory; all are stopped (and a
    process must exit 0) at teardown."""
    started: list = []

    def make(*, args: list[str] | tuple[str, ...] = (), **kwargs: object):
        srv = cls(tmp_path / f"server{len(started)}", args=args, **kwargs)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers with extra options: `server_factory(args=["--file-ttl", "5"])`."""
    yield from servers(tmp_path, ServerProcess)


@pytest.fixture
def client_a(server: ServerProcess):
    """A google-genai Client of project "key-a" on the `server` fixture."""
    return server.client(KEY_A)


@pytest.fixture
def client_b(server: ServerProcess):
    return server.client(KEY_B)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: the batches count what runs
def pytest_collection_modifyitems(config, items: list) -> None:
    """Tests marked `heavy(seconds)` start first, at the head of pytest-xdist workers' first
    batches: a test of tens of seconds that a worker reaches late keeps the run going long after
    the others are done. xdist's `load` scheduler hands each of its N workers a first batch of
    len(items) // N // 4 consecutive tests (at most --maxschedchunk, at least 2), then more as
    they finish. The heavy tests go to the
    heads of those batches, longest first, each to the batch with the fewest heavy seconds so
    far (`seconds`: a rough figure on the busy 2-core machine, for this ordering only). Without
    xdist nothing moves. Every worker computes the same order, as xdist requires."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if workers < 2 or not heavy:
        return
    rest = [item for item in items if not item.get_closest_marker("heavy")]
    heads: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in sorted(heavy, key=lambda i: -i.get_closest_marker("heavy").args[0]):
        slot = load.index(min(load))
        heads[slot].append(item)
        load[slot] += item.get_closest_marker("heavy").args[0]
    chunk = config.getoption("maxschedchunk", None) or len(items)  # xdist's own arithmetic
    batch = max(min(len(items) // workers // 4, chunk), 2)
    ordered: list = []
    for head in heads:
        take = max(batch - len(head), 0)
        ordered += head + rest[:take]
        rest = rest[take:]
    items[:] = ordered + rest


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its tally goes to the controller
        workeroutput["tally"] = TALLY.as_dict()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # xdist's, on the controller
    tally = getattr(node, "workeroutput", {}).get("tally")
    if tally is None:  # a worker that crashed hands nothing over: say the sum lacks it
        TALLY.incomplete = True
    else:
        TALLY.merge(tally)


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY.any():
        terminalreporter.write_line(TALLY.line())


def pytest_configure(config) -> None:
    """No garbage collection while the test modules are imported, in a process that collects
    them (an xdist worker, or a run without xdist; not xdist's controller, which collects
    nothing): imports make long-lived objects only, which the collector would walk again at
    each run (~0.3 s of CPU per worker). pytest_collection_finish enables it again."""
    controller = getattr(config.option, "numprocesses", None) or getattr(config.option, "tx", None)
    if hasattr(config, "workerinput") or not controller:
        gc.disable()


def pytest_collection_finish(session) -> None:
    """Collection imported google-genai, hypothesis and the test modules: a heap of long-lived
    objects that every full garbage collection then walked again, ~15% of the CPU of the
    allocation-heavy hypothesis tests (tests/fs/test_model.py with tests/unit/test_catalog.py:
    33.7 -> 28.6 CPU-s). Frozen, the collector skips them (they live as long as the worker)."""
    gc.freeze()
    gc.enable()
    if os.environ.get("GEMFS_TEST_WARMUP"):  # make test's collection before the workers start
        _warm_hypothesis()


def _warm_hypothesis() -> None:
    """Have hypothesis write what it caches under .hypothesis/ at its first example: the
    constants it reads out of every local module (the AST of gemfs and of the tests) and its
    Unicode tables. In a fresh clone each xdist worker computed them at once, ~3.5 s of CPU
    apiece; after this one example the workers read them."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=1, database=None)
    @given(st.text())
    def one(_text: str) -> None:
        pass

    one()
