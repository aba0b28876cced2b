"""`Remote._call`'s retry deadline, without a server: what is retried, how long, from when."""

from __future__ import annotations

import errno
import time

import pytest

from gemfs.errors import GemfsError
from gemfs.remote import Remote


@pytest.fixture
def remote():
    r = Remote("unused-key", "http://127.0.0.1:9", deadline=0.6)
    yield r
    r.close()


def test_a_persistent_failure_is_retried_until_the_deadline_then_eio(remote):
    calls = []

    def fails():
        calls.append(time.monotonic())
        raise ConnectionError("reset by peer")

    start = time.monotonic()
    with pytest.raises(GemfsError) as info:
        remote._call("list", fails)
    assert info.value.errno == errno.EIO
    assert len(calls) >= 2
    assert calls[-1] - start < 0.6  # no attempt starts after the deadline
    assert time.monotonic() - start < 0.6 + 0.2


def test_the_deadline_counts_from_the_first_failure(remote):
    """A first attempt that works longer than the whole deadline (a big upload) and then fails
    is still retried."""
    calls = []

    def slow_then_fails_once():
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.9)
            raise ConnectionError("reset by peer")
        return "uploaded"

    assert remote._call("upload", slow_then_fails_once) == "uploaded"
    assert len(calls) == 2


def test_garbled_answers_are_retried_other_exceptions_are_not(remote):
    calls = []

    def garbled():
        calls.append(1)
        raise ValueError("Expecting value: line 1 column 1 (char 0)")  # the SDK's json.loads

    with pytest.raises(GemfsError):
        remote._call("get", garbled)
    assert len(calls) >= 2

    def bug():
        calls.append(1)
        raise RuntimeError("not an API failure")  # a bug is not hidden behind retries

    calls.clear()
    with pytest.raises(RuntimeError):
        remote._call("get", bug)
    assert calls == [1]
