"""The test and benchmark control plane of the public API: per-operation request counters,
simulated latency, and scripted faults (errors, connection resets or closes, stalls, garbage
bodies), fired either instead of the handler or after it, in place of its answer.

Every public request passes through `Control.admit` before its handler runs and through
`Control.answer` after it; the admin routes (`admin.py`) read and change the state kept here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from gemfs.server import wire
from gemfs.server.errors import ApiError
from gemfs.server.responses import NoResponse, WireResponse, discard_body, error_response

log = logging.getLogger(__name__)

OPS = (
    "upload_start",
    "upload_chunk",
    "upload_finalize",
    "get",
    "list",
    "delete",
    "download",
    "other",
)
FAULT_OPS = OPS[:-1]
UPLOAD_OPS = ("upload_chunk", "upload_finalize")
ACTIONS = ("error", "reset", "close", "stall", "garbage")
# "before": the fault replaces the handler (nothing happens on the server). "after": the handler
# runs to the end (its work is committed) and the fault replaces its answer: a lost answer.
WHEN = ("before", "after")

# Statuses that the SDK's chunk loop should see as a transient front-end failure: no
# `X-Goog-Upload-Status`, so it re-sends the same chunk (3 attempts, 1+2+4 s; wire doc §2.3).
TRANSIENT_UPLOAD_STATUSES = frozenset({429, 503})

# The ASGI scope extension through which the HTTP protocol offers to abort the connection
# (set by `gemfs.server.main`; absent under other servers, where "reset" cannot be simulated).
ABORT_EXTENSION = "gemfs.abort"
# Likewise for closing the connection cleanly (FIN) without an answer.
CLOSE_EXTENSION = "gemfs.close"
# Where `admit` leaves an "after" rule for `answer`; the ASGI scope lives as long as the request.
_AFTER_RULE = "gemfs.after_fault"


class RuleError(ValueError):
    pass


@dataclasses.dataclass
class FaultRule:
    op: str
    action: str
    status: int = 503
    times: int = 1  # how many matching requests to hit; -1 = every one
    skip: int = 0  # how many matching requests to let through first
    seconds: float = 5.0  # stall duration
    message: str | None = None
    upload_status: str | None = None  # None = automatic (see `_upload_status`), "" = omit
    when: str = "before"
    hits: int = 0

    @classmethod
    def from_json(cls, raw: object) -> FaultRule:
        if not isinstance(raw, Mapping):
            raise RuleError("each rule must be an object")
        op, action = raw.get("op"), raw.get("action", "error")
        if op not in FAULT_OPS:
            raise RuleError(f"op must be one of {', '.join(FAULT_OPS)}")
        if action not in ACTIONS:
            raise RuleError(f"action must be one of {', '.join(ACTIONS)}")
        when = raw.get("when", "before")
        if when not in WHEN:
            raise RuleError(f"when must be one of {', '.join(WHEN)}")
        try:
            rule = cls(
                op=op,
                action=action,
                status=int(raw.get("status", 503)),
                times=int(raw.get("times", 1)),
                skip=int(raw.get("skip", 0)),
                seconds=float(raw.get("seconds", 5.0)),
                message=None if raw.get("message") is None else str(raw["message"]),
                upload_status=(
                    None if raw.get("uploadStatus") is None else str(raw["uploadStatus"])
                ),
                when=when,
            )
        except (TypeError, ValueError) as exc:
            raise RuleError(f"bad rule field: {exc}") from None
        if not 400 <= rule.status <= 599:
            raise RuleError("status must be an HTTP error status (400-599)")
        if rule.times == 0 or rule.times < -1 or rule.skip < 0 or rule.seconds < 0:
            raise RuleError("times must be >= 1 or -1; skip and seconds must be >= 0")
        return rule

    def to_json(self) -> dict[str, object]:
        out = {
            "op": self.op,
            "action": self.action,
            "status": self.status,
            "times": self.times,
            "skip": self.skip,
            "seconds": self.seconds,
            "when": self.when,
            "hits": self.hits,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.upload_status is not None:
            out["uploadStatus"] = self.upload_status
        return out

    def exhausted(self) -> bool:
        return self.times != -1 and self.hits >= self.times


class Faults:
    """An ordered list of rules; the first live rule matching a request's op fires."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []

    def set(self, rules: list[FaultRule]) -> None:
        self._rules = list(rules)

    def clear(self) -> None:
        self._rules = []

    def describe(self) -> list[dict[str, object]]:
        return [r.to_json() for r in self._rules]

    def take(self, op: str) -> FaultRule | None:
        for rule in self._rules:
            if rule.op != op or rule.exhausted():
                continue
            if rule.skip > 0:
                rule.skip -= 1
                return None
            rule.hits += 1
            return rule
        return None


class Stats:
    def __init__(self) -> None:
        self._counts = dict.fromkeys(OPS, 0)
        # Body bytes announced (Content-Length) by requests to upload URLs, faulted ones too: what
        # clients put on the wire, so tests can tell how much an upload sent more than once.
        self.upload_bytes = 0

    def count(self, op: str, body_bytes: int = 0) -> None:
        self._counts[op] += 1
        if op in UPLOAD_OPS:
            self.upload_bytes += body_bytes

    def reset(self) -> None:
        self._counts = dict.fromkeys(OPS, 0)
        self.upload_bytes = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class Control:
    def __init__(self, *, latency_seconds: float = 0.0) -> None:
        self.latency = latency_seconds
        self.stats = Stats()
        self.faults = Faults()

    async def admit(self, request: Request, op: str) -> Response | None:
        """Counts the request, applies the latency, and fires a "before" fault if one matches.
        Returns the answer to send instead of running the handler, or None to run it (an
        "after" rule is kept for `answer`)."""
        length = request.headers.get("content-length", "")
        self.stats.count(op, int(length) if length.isdigit() else 0)
        if self.latency:
            await asyncio.sleep(self.latency)
        rule = self.faults.take(op)
        if rule is None:
            return None
        if rule.when == "after":
            request.scope[_AFTER_RULE] = rule
            return None
        log.info("fault injection: %s on %s", rule.action, op)
        if rule.action == "stall":
            await asyncio.sleep(rule.seconds)
            return None
        if rule.action in ("reset", "close"):
            return _drop_connection(request, rule.action)
        # The bytes of a faulted chunk are read and dropped, never stored.
        await discard_body(request)
        return _fault_answer(rule)

    async def answer(self, request: Request, response: Response) -> Response:
        """The answer to send once the handler ran: its own, unless an "after" rule took this
        request, in which case the work is done and the client sees the fault instead."""
        rule: FaultRule | None = request.scope.pop(_AFTER_RULE, None)
        if rule is None:
            return response
        log.info("fault injection: %s on %s after the handler", rule.action, rule.op)
        if rule.action == "stall":
            await asyncio.sleep(rule.seconds)
            return response
        # The handler may have answered early without reading all of the body (an error).
        await discard_body(request)
        if rule.action in ("reset", "close"):
            return _drop_connection(request, rule.action)
        return _fault_answer(rule)


def _drop_connection(request: Request, action: str) -> Response:
    """Ends the connection with no answer: RST for "reset", FIN for "close"."""
    name = ABORT_EXTENSION if action == "reset" else CLOSE_EXTENSION
    drop: Callable[[], None] | None = request.scope.get("extensions", {}).get(name)
    if drop is None:
        raise RuntimeError(f"this HTTP server cannot {action} connections")
    drop()
    return NoResponse()


def _fault_answer(rule: FaultRule) -> Response:
    """The answer of an "error" or "garbage" rule."""
    if rule.action == "garbage":
        return WireResponse(
            200, wire.FAULT_GARBAGE_BODY, {wire.H_CONTENT_TYPE: "text/html; charset=UTF-8"}
        )
    err = ApiError(rule.status, rule.message)
    upload_status = _upload_status(rule)
    if upload_status:
        err.headers[wire.H_UPLOAD_STATUS] = upload_status
    return error_response(err)


def _upload_status(rule: FaultRule) -> str:
    if rule.upload_status is not None:
        return rule.upload_status
    if rule.op in UPLOAD_OPS and rule.status not in TRANSIENT_UPLOAD_STATUSES:
        return wire.UPLOAD_FINAL
    return ""
