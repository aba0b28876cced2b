"""`Remote._call`'s retry deadline, without a server and without sleeping (a fake clock): what is
retried, how long, from when, how the SDK's quota and rate-limit answers are read, and that a
delete whose answer was lost counts as done."""

from __future__ import annotations

import errno
import ssl

import httpx2
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from gemfs.errors import GemfsError
from gemfs.remote import Remote
from tests.helpers import FakeTime, _create_default_context


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


def _sdk_transport_error(name: str) -> type[Exception]:
    """The SDK's own exception class `name`: it talks through httpx2."""
    return getattr(httpx2, name)


MISSING_FILE_BODY = {"error": {
    "code": 403, "status": "PERMISSION_DENIED",
    "message": "You do not have permission to access the File abc123 or it may not exist."}}


def test_a_delete_whose_answer_was_lost_is_done_when_the_retry_finds_the_file_gone(
        remote, fake_time, monkeypatch):
    """The server deleted the File and the connection dropped before its answer (a reset after
    the handler: a read error, which the SDK's own HttpRetryOptions does not retry); the retry
    gets the API's answer for a missing File, and that means the delete is done."""
    calls = []

    def delete(name):
        calls.append(name)
        if len(calls) == 1:
            raise _sdk_transport_error("RemoteProtocolError")(
                "Server disconnected without sending a response.")
        raise genai_errors.ClientError(403, MISSING_FILE_BODY)

    monkeypatch.setattr(remote._client.files, "delete", delete)
    remote.delete("abc123")  # no error
    assert calls == ["abc123", "abc123"] and len(fake_time.sleeps) == 1


def test_a_delete_refused_at_once_is_not_retried_and_not_hidden(remote, fake_time, monkeypatch):
    calls = []

    def delete(name):
        calls.append(name)
        raise genai_errors.ClientError(400, {"error": {
            "code": 400, "status": "INVALID_ARGUMENT", "message": "bad name"}})

    monkeypatch.setattr(remote._client.files, "delete", delete)
    with pytest.raises(GemfsError) as info:
        remote.delete("abc123")
    assert info.value.errno == errno.EINVAL
    assert calls == ["abc123"] and fake_time.sleeps == []


@pytest.mark.parametrize("error", ["ReadError", "RemoteProtocolError", "ConnectError", "ReadTimeout"])
def test_every_transport_error_of_a_get_is_retried(remote, fake_time, monkeypatch, error):
    calls = []
    file = types.File(name="files/abc123", display_name="a.txt", size_bytes=3)

    def get(name):
        calls.append(name)
        if len(calls) == 1:
            raise _sdk_transport_error(error)("dropped")
        return file

    monkeypatch.setattr(remote._client.files, "get", get)
    assert remote.get("abc123").id == "abc123"
    assert len(calls) == 2 and len(fake_time.sleeps) == 1


def count_ca_loads(monkeypatch) -> list[str]:
    """Every CA bundle loaded into an SSLContext from now on (the test's end undoes it)."""
    loads: list[str] = []
    for method in ("load_verify_locations", "set_default_verify_paths", "load_default_certs"):
        def counted(self, *args, _method=method, _real=getattr(ssl.SSLContext, method), **kw):
            loads.append(_method)
            return _real(self, *args, **kw)
        monkeypatch.setattr(ssl.SSLContext, method, counted)
    return loads


def _contexts(r: Remote) -> list:
    """The TLS context each of the Remote's clients would use: the SDK's httpx2, aiohttp and
    websocket clients (google-genai 3.6's attributes) and the upload client's pool."""
    sdk = r._client._api_client
    return [sdk._httpx_client._transport._pool._ssl_context,
            sdk._async_client_session_request_args["ssl"],
            sdk._websocket_ssl_ctx["ssl"],
            r._http._transport._pool._ssl_context]


@pytest.mark.parametrize("url,bundles", [("http://127.0.0.1:9", 0), ("https://example.test", 1)])
def test_all_clients_share_one_tls_context_built_once(monkeypatch, url, bundles):
    """Each client building its own context cost four CA-bundle loads (~0.3 s of CPU) at every
    mount start; a plain-http URL needs none, and its context trusts nothing."""
    # The test processes share one default context (tests/conftest.py); here, the real one.
    monkeypatch.setattr(ssl, "create_default_context", _create_default_context)
    loads = count_ca_loads(monkeypatch)
    r = Remote("unused-key", url)
    try:
        contexts = _contexts(r)
        assert all(c is contexts[0] for c in contexts), contexts
        assert len(loads) == bundles, loads
        assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
        if bundles == 0:
            assert contexts[0].get_ca_certs() == [] and contexts[0].cert_store_stats()["x509"] == 0
    finally:
        r.close()
