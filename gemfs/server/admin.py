"""The admin API for tests and benchmarks, under /_gemfs/admin/ and only with `--admin`:
create GENERATED Files (with the long ids of other services, too), seed many Files at once, make
a File end FAILED, read and reset request counters, script faults, and move the clock. See
docs/SERVER.md for the contract.

These routes are not part of the emulated API: they are not counted, delayed or faulted.
"""

from __future__ import annotations

import logging
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gemfs.server import errors, wire
from gemfs.server.control import FaultRule, RuleError
from gemfs.server.plumbing import Handler, Plumbing, run_sync
from gemfs.server.responses import json_response

log = logging.getLogger(__name__)

PREFIX = "/_gemfs/admin"
MAX_SEED_COUNT = 100_000
DEFAULT_GENERATED_MIME = "application/octet-stream"


def routes(api: Plumbing) -> list[Route]:
    admin = _Admin(api)
    return [
        Route("/generated", admin.wrap(admin.generated), methods=["POST"]),
        Route("/seed", admin.wrap(admin.seed), methods=["POST"]),
        Route("/fail", admin.wrap(admin.fail), methods=["POST"]),
        Route("/stats", admin.wrap(admin.stats), methods=["GET"]),
        Route("/stats/reset", admin.wrap(admin.reset_stats), methods=["POST"]),
        Route("/faults", admin.wrap(admin.faults), methods=["GET", "POST", "DELETE"]),
        Route("/clock", admin.wrap(admin.clock), methods=["GET", "POST"]),
    ]


class _Admin:
    def __init__(self, api: Plumbing) -> None:
        self.api = api
        self.store = api.store
        self.control = api.control

    def wrap(self, handler: Handler) -> Handler:
        """The same error handling as the public routes, without the control plane."""

        async def endpoint(request: Request) -> Response:
            return await self.api.guard(request, None, handler)

        return endpoint

    async def generated(self, request: Request) -> Response:
        """Body bytes -> a GENERATED File with a downloadUri, in the key's project."""
        project = self.api.authenticate(request)
        params = request.query_params
        # Files of other services (batch outputs) have ids the user rule refuses (§12).
        name = self.api.parse_user_name(params.get("name"), wire.SERVICE_ID_RE)
        display_name = self.api.parse_display_name(params.get("displayName"))
        mime_type = params.get("mimeType") or DEFAULT_GENERATED_MIME
        writer = await run_sync(self.store.new_blob_writer)
        try:
            await self.api.pump_body(request, writer.write)
        except BaseException:
            writer.discard()
            raise
        rec = await run_sync(
            lambda: self.store.create_generated(
                project, writer, mime_type=mime_type, display_name=display_name, name=name
            )
        )
        return json_response(self.api.render(rec))

    async def seed(self, request: Request) -> Response:
        """Many ACTIVE uploaded Files (metadata only) in one transaction."""
        project = self.api.authenticate(request)
        body = await self.api.read_json(request)
        count = _int_field(body, "count", None, 1, MAX_SEED_COUNT)
        size = _int_field(body, "sizeBytes", 1024, 0, None)
        prefix = body.get("displayNamePrefix", "seed/")
        mime_type = body.get("mimeType", "text/plain")
        if not isinstance(prefix, str) or not isinstance(mime_type, str) or not mime_type:
            raise errors.invalid_argument("displayNamePrefix and mimeType must be strings.")
        recs = await run_sync(
            lambda: self.store.seed(project, count, prefix=prefix, size=size, mime_type=mime_type)
        )
        return json_response({"count": len(recs), "names": [f"files/{r.id}" for r in recs]})

    async def fail(self, request: Request) -> Response:
        """{"name", "code"?, "message"?}: the key's File is FAILED with that error from now on."""
        project = self.api.authenticate(request)
        body = await self.api.read_json(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.removeprefix("files/"):
            raise errors.invalid_argument("'name' must be a File name (files/<id>).")
        code = _int_field(body, "code", wire.DEFAULT_FAILURE_CODE, 1, 16)
        message = body.get("message", wire.MSG_DEFAULT_FAILURE)
        if not isinstance(message, str) or not message:
            raise errors.invalid_argument("'message' must be a non-empty string.")
        file_id = name.removeprefix("files/")
        rec = await run_sync(self.store.fail_file, project, file_id, code, message)
        if rec is None:
            raise errors.file_not_found(file_id)
        return json_response(self.api.render(rec))

    async def stats(self, request: Request) -> Response:
        return json_response({"requests": self.control.stats.snapshot(),
                              "uploadBytes": self.control.stats.upload_bytes})

    async def reset_stats(self, request: Request) -> Response:
        self.control.stats.reset()
        return json_response({"requests": self.control.stats.snapshot(),
                              "uploadBytes": self.control.stats.upload_bytes})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self.api.read_json(request)
            raw_rules = body.get("rules")
            if not isinstance(raw_rules, list):
                raise errors.invalid_argument("'rules' must be a list.")
            try:
                self.control.faults.set([FaultRule.from_json(r) for r in raw_rules])
            except RuleError as exc:
                raise errors.invalid_argument(str(exc)) from None
            log.info("fault rules set: %s", self.control.faults.describe())
        elif request.method == "DELETE":
            self.control.faults.clear()
        return json_response({"rules": self.control.faults.describe()})

    async def clock(self, request: Request) -> Response:
        """POST {"advanceSeconds": S} moves the clock forward and sweeps; GET reads it."""
        if request.method == "POST":
            body = await self.api.read_json(request)
            seconds = body.get("advanceSeconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise errors.invalid_argument("advanceSeconds must be a number >= 0.")
            self.store.clock.advance(float(seconds))
            await run_sync(self.store.sweep)
        now = self.store.now_us()
        return json_response(
            {"now": wire.timestamp_us(now), "offsetSeconds": self.store.clock.offset}
        )


def _int_field(body: dict, key: str, default: int | None, low: int, high: int | None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.invalid_argument(f"'{key}' must be an integer.")
    if value < low or (high is not None and value > high):
        raise errors.invalid_argument(f"'{key}' must be between {low} and {high or 'any'}.")
    return value
