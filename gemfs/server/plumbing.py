"""What every route of the server needs, public or admin: who is asking (the API key's project),
the request's body (streamed to disk, or read as JSON), the checks of chosen names, the File
as JSON, and the one error wrapper that turns every failure into a Google-shaped answer.

`app.py` (the emulated API) and `admin.py` (the test API) both build on `Plumbing`; neither
imports the other's handlers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gemfs.server import errors, lenient_json, wire
from gemfs.server.config import ServerConfig, project_of_key
from gemfs.server.control import Control
from gemfs.server.errors import ApiError
from gemfs.server.responses import NoResponse, error_response, failure_response
from gemfs.server.store import FileRecord, Store, StoreError

log = logging.getLogger(__name__)

# Request bodies are written to disk in pieces of this size: large enough that thread hops are
# rare, small enough that many concurrent uploads stay cheap in memory.
WRITE_PIECE = 1024 * 1024
# JSON request bodies (upload start, register, admin) are tiny; refuse to buffer big ones.
MAX_JSON_BODY = 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]

# Blocking store work runs in worker threads; a cancelled request still lets it finish.
run_sync = anyio.to_thread.run_sync


class Plumbing:
    """The state the routes share (config, store, control plane) and the helpers over it."""

    def __init__(self, config: ServerConfig, store: Store, control: Control) -> None:
        self.config = config
        self.store = store
        self.control = control

    async def guard(self, request: Request, op: str | None, handler: Handler) -> Response:
        """Runs a handler and turns every failure into a Google-shaped answer. A public
        request (`op` names it) passes the control plane first (counters, latency, faults),
        and a fault rule set to fire after the handler may replace its answer; an admin
        request (`op` None) does not."""
        try:
            if op is not None:
                early = await self.control.admit(request, op)
                if early is not None:
                    return early
            response = await handler(request)
        except (ApiError, StoreError) as exc:
            response = await failure_response(request, exc)
        except ClientDisconnect:
            return NoResponse()
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            response = error_response(errors.internal())
        if op is None:
            return response
        return await self.control.answer(request, response)

    def authenticate(self, request: Request) -> str:
        """The project of the request's API key (header `x-goog-api-key`, else `?key=`)."""
        key = request.headers.get("x-goog-api-key")
        if key is None:
            key = request.query_params.get("key")
        key = (key or "").strip()
        if not key:
            raise errors.unregistered_caller()
        project = project_of_key(key)
        if self.config.projects and project not in self.config.projects:
            raise errors.invalid_api_key()
        return project

    async def read_json(self, request: Request) -> dict:
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_JSON_BODY:
                raise errors.invalid_argument(
                    wire.MSG_PAYLOAD_TOO_LARGE.format(limit=MAX_JSON_BODY)
                )
        if not body.strip():
            return {}
        try:
            # As leniently as the real front end (single quotes, bare keys), and never a lone
            # surrogate, which could be neither stored (SQLite wants UTF-8) nor a file name.
            payload = lenient_json.loads(bytes(body))
        except lenient_json.JsonSyntaxError as exc:
            raise errors.invalid_argument(wire.MSG_INVALID_JSON.format(detail=str(exc))) from None
        if not isinstance(payload, dict):
            raise errors.invalid_argument(
                wire.MSG_INVALID_JSON.format(detail="Expected a JSON object.")
            )
        return payload

    async def pump_body(self, request: Request, write: Callable[[bytearray], None]) -> None:
        """Streams the request body into `write` (called in a worker thread) piece by piece,
        so no more than WRITE_PIECE bytes of a request are ever held in memory."""
        buf = bytearray()
        async for piece in request.stream():
            buf += piece
            if len(buf) >= WRITE_PIECE:
                data, buf = buf, bytearray()
                await run_sync(write, data)
        if buf:
            await run_sync(write, buf)

    @staticmethod
    def parse_user_name(value: object, rule: re.Pattern[str] = wire.USER_ID_RE) -> str | None:
        """A chosen File id from `files/<id>` or `<id>`, by the user's rule (§9.5) unless told
        otherwise; None if not given."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise errors.invalid_argument(wire.MSG_INVALID_NAME.format(name=value))
        file_id = value.removeprefix("files/")
        if not rule.fullmatch(file_id):
            raise errors.invalid_argument(wire.MSG_INVALID_NAME.format(name=value))
        return file_id

    @staticmethod
    def parse_display_name(value: object) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise errors.invalid_argument(wire.MSG_INVALID_DISPLAY_NAME)
        if len(value) > wire.DISPLAY_NAME_MAX_CHARS:
            raise errors.invalid_argument(wire.MSG_DISPLAY_NAME_TOO_LONG)
        return value

    def render(self, rec: FileRecord) -> dict[str, object]:
        return wire.file_resource(rec, self.store.now_us())
