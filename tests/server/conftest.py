"""The server tests run the app in process (`InProcessServer`) unless they need a real
connection: a module that sets `REAL_PROCESS = True` gets `gemfs serve` subprocesses from
`server` and `server_factory`, and any test can ask for `server_process` / `process_factory`.
`client_a` and `client_b` (tests/conftest.py) follow whichever `server` a test gets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import servers
from tests.helpers import DEFAULT_KEYS, InProcessServer, ServerProcess


def _server_class(request) -> type:
    return ServerProcess if getattr(request.module, "REAL_PROCESS", False) else InProcessServer


@pytest.fixture
def server(request, tmp_path: Path) -> Iterator[InProcessServer | ServerProcess]:
    """`gemfs serve --admin` with keys "key-a" and "key-b", data under tmp_path."""
    with _server_class(request)(tmp_path / "server", keys=DEFAULT_KEYS) as srv:
        yield srv


@pytest.fixture
def server_factory(request, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Servers with extra options: `server_factory(args=["--file-ttl", "5"])`."""
    yield from servers(tmp_path, _server_class(request))


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `gemfs serve --admin` subprocess, for what needs a connection."""
    with ServerProcess(tmp_path / "server", keys=DEFAULT_KEYS) as srv:
        yield srv


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Real subprocess servers with extra options; each must exit 0 at teardown."""
    yield from servers(tmp_path, ServerProcess)
