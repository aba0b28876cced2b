"""The server tests run the app in process (`InProcessServer`) unless they need a real
connection; those ask for `server_process` / `process_factory` (a `gemfs serve` subprocess).
`client_a` and `client_b` (tests/conftest.py) follow whichever `server` a test gets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DEFAULT_KEYS, InProcessServer, ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    """The app of `gemfs serve --admin` with keys "key-a" and "key-b", data under tmp_path."""
    with InProcessServer(tmp_path / "server", keys=DEFAULT_KEYS) as srv:
        yield srv


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., InProcessServer]]:
    """In-process servers with extra options: `server_factory(args=["--file-ttl", "5"])`."""
    started: list[InProcessServer] = []

    def make(*, args: list[str] | tuple[str, ...] = (), **kwargs: object) -> InProcessServer:
        data_dir = tmp_path / f"server{len(started)}"
        srv = InProcessServer(data_dir, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `gemfs serve --admin` subprocess, for what needs a connection."""
    with ServerProcess(tmp_path / "server", keys=DEFAULT_KEYS) as srv:
        yield srv


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Real subprocess servers with extra options; each must exit 0 at teardown."""
    started: list[ServerProcess] = []

    def make(*, args: list[str] | tuple[str, ...] = (), **kwargs: object) -> ServerProcess:
        data_dir = tmp_path / f"server{len(started)}"
        srv = ServerProcess(data_dir, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()
