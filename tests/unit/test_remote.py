"""`Remote._call`'s retry deadline, without a server and without sleeping (a fake clock): what is
retried, how long, from when, and how the SDK's quota and rate-limit answers are read."""

from __future__ import annotations

import errno

import pytest
from google.genai import errors as genai_errors

from gemfs.errors import GemfsError
from gemfs.remote import Remote
from tests.helpers import FakeTime


@pytest.fixture
def fake_time():
    return FakeTime()


@pytest.fixture
def remote(fake_time):
    r = Remote("unused-key", "http://127.0.0.1:9", deadline=0.6, clock=fake_time.clock,
               sleep=fake_time.sleep)
    yield r
    r.close()


def test_a_persistent_failure_is_retried_until_the_deadline_then_eio(remote, fake_time):
    calls = []

    def fails():
        calls.append(fake_time.now)
        raise ConnectionError("reset by peer")

    start = fake_time.now
    with pytest.raises(GemfsError) as info:
        remote._call("list", fails)
    assert info.value.errno == errno.EIO
    assert len(calls) >= 2
    assert calls[-1] - start < 0.6  # no attempt starts after the deadline
    assert fake_time.now - start < 0.6  # and no wait runs past it
    assert len(fake_time.sleeps) == len(calls) - 1


def test_the_deadline_counts_from_the_first_failure(remote, fake_time):
    """A first attempt that works longer than the whole deadline (a big upload) and then fails
    is still retried."""
    calls = []

    def slow_then_fails_once():
        calls.append(1)
        if len(calls) == 1:
            fake_time.now += 0.9
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


QUOTA_BODY = {"error": {
    "code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": "Quota exceeded for metric: generativelanguage.googleapis.com/file_storage_bytes, "
               "limit: 21474836480",
    "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generativelanguage.googleapis.com/file_storage_bytes",
                                 "quotaId": "FileStorageBytesPerProject"}]}],
}}


def test_the_sdks_storage_quota_answer_is_edquot_without_a_retry(remote, fake_time):
    calls = []

    def full():
        calls.append(1)
        raise genai_errors.ClientError(429, QUOTA_BODY)

    with pytest.raises(GemfsError) as info:
        remote._call("list", full)
    assert info.value.errno == errno.EDQUOT
    assert calls == [1] and fake_time.sleeps == []


def test_a_rate_limit_waits_as_long_as_retry_info_asks(fake_time):
    r = Remote("unused-key", "http://127.0.0.1:9", deadline=60.0, clock=fake_time.clock,
               sleep=fake_time.sleep)
    calls = []
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                      "message": "Resource has been exhausted (e.g. check quota).",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": "22s"}]}}

    def limited_once():
        calls.append(1)
        if len(calls) == 1:
            raise genai_errors.ClientError(429, body)
        return "listed"

    try:
        assert r._call("list", limited_once) == "listed"
    finally:
        r.close()
    assert fake_time.sleeps == [22.0]


def test_a_rate_limit_that_asks_past_the_deadline_fails_at_once(remote, fake_time):
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": "30s"}]}}

    def limited():
        raise genai_errors.ClientError(429, body)

    with pytest.raises(GemfsError) as info:
        remote._call("list", limited)
    assert info.value.errno == errno.EIO and fake_time.sleeps == []
