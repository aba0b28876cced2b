"""The reliability suite's tally: one summary line at the end of the session (the figures
docs/RELIABILITY.md quotes): faults injected, operations that survived them, operations that
failed cleanly (non-zero exit, nothing partial listed), bytes lost and duplicate Files (both must
be 0), and the bytes uploads sent more than once, with the most that one fault cost, for faults
before the server's handler and after it.

Under pytest-xdist each worker keeps its own tally and hands it to the controller when it
finishes (tests/conftest.py), which adds them up: sums for the counts, maxima for the "at most"
figures.
"""

from __future__ import annotations

import threading


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults_injected = 0
        self.survived = 0  # operations that succeeded despite faults
        self.failed_cleanly = 0  # operations that failed with an error and left nothing partial
        self.bytes_written = 0  # bytes of every write whose close succeeded
        self.bytes_verified = 0  # of those, found whole (sha256) through the SDK
        self.bytes_lost = 0
        self.duplicates = 0  # Files beyond one per display name written, and Files nobody wrote
        self.bytes_resent = 0  # upload bytes the server received more than once (its own count)
        # by `when`: the most one fault cost (an upload's re-sent bytes over its faults), and
        # the most one upload re-sent in all
        self.resent_per_fault = {"before": 0, "after": 0}
        self.resent_per_upload = {"before": 0, "after": 0}
        self.fuzz_requests = 0

    def as_dict(self) -> dict:
        with self._lock:
            return {k: (dict(v) if isinstance(v, dict) else v)
                    for k, v in vars(self).items() if not k.startswith("_") and k != "incomplete"}

    def merge(self, other: dict) -> None:
        """Add another process's `as_dict()`: counts add up, per-fault/per-upload maxima max."""
        with self._lock:
            for name, value in other.items():
                mine = getattr(self, name)
                if isinstance(mine, dict):
                    for when, n in value.items():
                        mine[when] = max(mine.get(when, 0), n)
                else:
                    setattr(self, name, mine + value)

    incomplete = False  # a pytest-xdist worker crashed and its counts are missing

    def any(self) -> bool:
        return bool(self.faults_injected or self.bytes_written or self.fuzz_requests)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def resent(self, when: str, nbytes: int, faults: int) -> None:
        """An upload that sent `nbytes` more than once under `faults` faults fired `when`."""
        with self._lock:
            self.bytes_resent += nbytes
            per_fault = -(-nbytes // max(faults, 1))
            self.resent_per_fault[when] = max(self.resent_per_fault[when], per_fault)
            self.resent_per_upload[when] = max(self.resent_per_upload[when], nbytes)

    def line(self) -> str:
        return (f"reliability: {self.faults_injected} faults injected, {self.survived} operations "
                f"survived, {self.failed_cleanly} failed cleanly, {self.bytes_written} bytes "
                f"written, {self.bytes_verified} verified, {self.bytes_lost} bytes lost, "
                f"{self.duplicates} duplicates, {self.bytes_resent} bytes re-sent (at most "
                f"{self.resent_per_fault['before']} per fault and "
                f"{self.resent_per_upload['before']} per upload for faults before the handler, "
                f"{self.resent_per_fault['after']} and {self.resent_per_upload['after']} after), "
                f"{self.fuzz_requests} fuzz requests"
                + (" (incomplete: a test worker crashed before handing its counts over)"
                   if self.incomplete else ""))


TALLY = Tally()
