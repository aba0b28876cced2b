"""Helpers of the faults, crash and load tests (issue 5, parts 1-3): the project seen from
outside the mount while it works (partial Files, names), staged files on disk, a clean server."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.reliability.conftest import KEY, sha_field


def staged_parts(staging_root: Path) -> list[Path]:
    """Staged (not yet uploaded) files under a --staging-dir, of every daemon."""
    return sorted(staging_root.glob("*/*.part")) if staging_root.exists() else []


def sdk_names(sdk) -> set[str]:
    return {f.display_name for f in sdk.files.list(config={"page_size": 100})}


class PartialWatcher:
    """Lists the project through the SDK in a loop while an operation runs, and records every
    File whose size or sha256 is not that of the whole expected bytes (a partial File)."""

    def __init__(self, server, expected: dict[str, bytes], interval: float = 0.2) -> None:
        self._client = server.client(KEY)  # kept: the SDK closes its transport on __del__
        self._expected = {name: (len(d), sha_field(d)) for name, d in expected.items()}
        self._interval = interval
        self._stop = threading.Event()
        self.partial: list[tuple] = []
        self.listings = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                files = list(self._client.files.list(config={"page_size": 100}))
            except Exception:  # a list fault or a restart; the next round looks again
                files = None
            if files is not None:
                self.listings += 1
                for f in files:
                    want = self._expected.get(f.display_name)
                    if want and ((f.size_bytes or 0), f.sha256_hash) != want:
                        self.partial.append((f.display_name, f.size_bytes, f.sha256_hash))
            self._stop.wait(self._interval)

    def __enter__(self) -> "PartialWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)
