"""The public Files API routes (wire doc §2): resumable upload, get, list, delete, download and
register, served alike under /v1, /v1beta and /v1alpha, plus the Starlette application that
puts them, the admin routes and the periodic sweep together.

Handlers parse and validate the request (with the helpers of `plumbing`, shared with the admin
routes), call the store off the event loop, and render the answer with `wire`; they never touch
disk or SQLite themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from gemfs.server import admin, errors, wire
from gemfs.server.config import ServerConfig, project_of_key
from gemfs.server.control import Control
from gemfs.server.cors import Cors
from gemfs.server.errors import ApiError
from gemfs.server.plumbing import Handler, Plumbing, run_sync
from gemfs.server.responses import (
    BlobResponse,
    WireResponse,
    discard_body,
    error_response,
    json_response,
)
from gemfs.server.store import (
    FileRecord,
    FileTooLarge,
    Overflow,
    QuotaExceeded,
    Store,
    UploadSession,
)

log = logging.getLogger(__name__)

UPLOAD_COMMANDS = frozenset({"upload", "finalize", "query", "cancel"})


class _VersionConvertor(Convertor[str]):
    regex = "|".join(wire.API_VERSIONS)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _FileIdConvertor(Convertor[str]):
    # No ':' so that `{id}:download` is its own route.
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("gemfs_version", _VersionConvertor())
register_url_convertor("gemfs_file", _FileIdConvertor())


class _KeyedLocks:
    """One asyncio lock per key, existing only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


class FilesApi(Plumbing):
    """The handlers, on the shared plumbing, and the locks of the upload sessions."""

    def __init__(self, config: ServerConfig, store: Store, control: Control) -> None:
        super().__init__(config, store, control)
        self._session_locks = _KeyedLocks()

    # --- plumbing ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        v = "{version:gemfs_version}"
        fid = "{file_id:gemfs_file}"
        routes: list[BaseRoute] = [
            Route(f"/upload/{v}/files", self.upload, methods=["POST"]),
            Route(f"/{v}/files", self._public("list", self.list_files), methods=["GET"]),
            Route(f"/{v}/files:register", self._public("other", self.register), methods=["POST"]),
            Route(
                f"/{v}/files/{fid}:download",
                self._public("download", self.download),
                methods=["GET"],
            ),
            Route(
                f"/download/{v}/files/{fid}:download",
                self._public("download", self.download),
                methods=["GET"],
            ),
            Route(f"/{v}/files/{fid}", self._public("get", self.get_file), methods=["GET"]),
            Route(
                f"/{v}/files/{fid}", self._public("delete", self.delete_file), methods=["DELETE"]
            ),
        ]
        if self.config.admin:
            routes.append(Mount(admin.PREFIX, routes=admin.routes(self)))
        return routes

    def _public(self, op: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await self.guard(request, op, handler)

        return endpoint

    def _upload_base(self, request: Request) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = request.headers.get("host")
        if not host:
            addr, port = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        return f"{request.url.scheme}://{host}"

    # --- resumable upload (§2.2, §2.3) -----------------------------------------------------

    async def upload(self, request: Request) -> Response:
        """`POST /upload/{v}/files`: a session start, or (with `upload_id`) a chunk command."""
        if "upload_id" not in request.query_params:
            return await self.guard(request, "upload_start", self.upload_start)
        command = request.headers.get("x-goog-upload-command", "").lower()
        op = "upload_finalize" if "finalize" in command else "upload_chunk"
        return await self.guard(request, op, self.upload_chunk)

    async def upload_start(self, request: Request) -> Response:
        project = self.authenticate(request)
        protocol = request.headers.get("x-goog-upload-protocol", "").strip().lower()
        command = request.headers.get("x-goog-upload-command", "").strip().lower()
        if protocol != "resumable" or command != "start":
            raise errors.invalid_argument(wire.MSG_UNSUPPORTED_PROTOCOL)
        meta = (await self.read_json(request)).get("file") or {}
        if not isinstance(meta, dict):
            raise errors.invalid_argument(
                wire.MSG_INVALID_JSON.format(detail="'file' must be an object.")
            )
        name = self.parse_user_name(meta.get("name"))
        display_name = self.parse_display_name(_either(meta, "displayName", "display_name"))
        mime_type = request.headers.get("x-goog-upload-header-content-type") or _either(
            meta, "mimeType", "mime_type"
        )
        if not isinstance(mime_type, str) or not mime_type.strip():
            raise errors.invalid_argument(wire.MSG_MISSING_MIME)
        size = _parse_size(
            request.headers.get("x-goog-upload-header-content-length")
            or _either(meta, "sizeBytes", "size_bytes"),
            required=self.config.require_upload_size,
        )
        token, _ = await run_sync(
            lambda: self.store.start_upload(
                project, name=name, display_name=display_name, mime_type=mime_type, size=size
            )
        )
        version = request.path_params["version"]
        url = (
            f"{self._upload_base(request)}/upload/{version}/files"
            f"?upload_id={token}&upload_protocol=resumable"
        )
        return WireResponse(
            200,
            b"",
            [
                (wire.H_UPLOAD_URL, url),
                (wire.H_UPLOAD_STATUS, wire.UPLOAD_ACTIVE),
                (wire.H_UPLOAD_CONTROL_URL, url),
                (wire.H_UPLOAD_GRANULARITY, str(wire.CHUNK_GRANULARITY)),
            ],
        )

    async def upload_chunk(self, request: Request) -> Response:
        """A command on an upload URL. Authorised by the upload id alone (§0 item 8); a request
        that carries the API key of another project is answered as if the session did not
        exist, and leaves it untouched."""
        token = request.query_params["upload_id"]
        raw_command = request.headers.get("x-goog-upload-command", "")
        commands = {c.strip().lower() for c in raw_command.split(",") if c.strip()}
        if await run_sync(self.store.get_session, token) is None:
            raise errors.upload_not_found()
        async with self._session_locks.hold(token):
            # Re-read: the session may have moved on while this request waited for the lock.
            session = await run_sync(self.store.get_session, token)
            if session is None or not _key_may_use(request, session):
                raise errors.upload_not_found()
            if not commands or not commands <= UPLOAD_COMMANDS:
                await self._end_unless_final(session)
                raise errors.invalid_argument(
                    wire.MSG_UNKNOWN_COMMAND.format(command=raw_command)
                ).upload_final()
            if "query" in commands:
                await discard_body(request)
                if session.finalized:
                    # §12: `final` comes with the File, so a client that lost the finalize
                    # answer learns the result from the query. Once the File is gone the
                    # session still says `final`, without a body.
                    rec = await run_sync(self.store.get_file, session.project, session.file_id)
                    if rec is not None:
                        return _final(self.render(rec), rec.size_bytes)
                return _progress(session)
            if "cancel" in commands:
                await discard_body(request)
                if session.finalized:
                    raise errors.invalid_argument(wire.MSG_ALREADY_FINALIZED).upload_final()
                await run_sync(self.store.end_session, session)
                return WireResponse(200, b"", {wire.H_UPLOAD_STATUS: wire.UPLOAD_CANCELLED})
            try:
                offset = _parse_offset(request, session, commands)
            except ApiError:
                await self._end_unless_final(session)
                raise
            if session.finalized:
                return await self._after_final(request, session, offset, commands)
            if offset != session.received:
                length = await discard_body(request)
                if _is_resend(session, offset, length):
                    return _progress(session)
                raise await self._ended(session, errors.invalid_argument(
                    wire.MSG_OFFSET_MISMATCH.format(offset=offset, received=session.received)
                ))
            if "upload" in commands:
                session = await self._receive_chunk(request, session, offset)
            else:
                await discard_body(request)
            if "finalize" not in commands:
                return _progress(session)
            if session.sized and session.received != session.declared:
                raise await self._ended(session, errors.invalid_argument(
                    wire.MSG_SIZE_MISMATCH.format(
                        received=session.received, declared=session.declared
                    )
                ))
            try:
                rec = await run_sync(self.store.finalize_upload, session)
            except (FileTooLarge, QuotaExceeded) as exc:  # only for a session of unknown size
                raise await self._ended(session, errors.from_store(exc)) from None
            log.debug("upload finalized: files/%s, %d bytes", rec.id, rec.size_bytes)
            return _final(self.render(rec), rec.size_bytes)

    async def _end_unless_final(self, session: UploadSession) -> None:
        """A terminal error ends an open session (its bytes and quota reservation go), as its
        `X-Goog-Upload-Status: final` tells the client; a finalized one keeps answering."""
        if not session.finalized:
            await run_sync(self.store.end_session, session)

    async def _ended(self, session: UploadSession, error: ApiError) -> ApiError:
        """`error`, made terminal, with the open session it ends (`_end_unless_final`): the
        caller raises it."""
        await self._end_unless_final(session)
        return error.upload_final()

    async def _receive_chunk(
        self, request: Request, session: UploadSession, offset: int
    ) -> UploadSession:
        try:
            # A chunk that cannot fit a session of unknown size is refused before its bytes
            # are written, when the request says how many there are.
            writer = await run_sync(self.store.begin_chunk, session, _content_length(request))
        except (FileTooLarge, QuotaExceeded) as exc:
            await discard_body(request)
            raise await self._ended(session, errors.from_store(exc)) from None
        try:
            await self.pump_body(request, writer.write)
        except (Overflow, FileTooLarge, QuotaExceeded) as exc:
            writer.discard()
            await discard_body(request)
            error = (
                errors.invalid_argument(wire.MSG_TOO_MANY_BYTES.format(declared=session.declared))
                if isinstance(exc, Overflow)
                else errors.from_store(exc)
            )
            raise await self._ended(session, error) from None
        except BaseException:
            # Client gone, task cancelled or disk error: the session stays as before this chunk.
            # Inline rather than in a thread so that it also runs under cancellation; it only
            # truncates and closes one file.
            writer.discard()
            raise
        try:
            return await run_sync(writer.commit, offset)
        except QuotaExceeded as exc:  # other sessions of the project grew meanwhile
            raise await self._ended(session, errors.from_store(exc)) from None

    async def _after_final(
        self, request: Request, session: UploadSession, offset: int, commands: set[str]
    ) -> Response:
        """A request on a finalized session. A re-send of the finalizing chunk (the SDK does
        that when it missed the answer) gets the same answer again; anything else is an error."""
        length = await discard_body(request)
        if "finalize" in commands and _is_resend(session, offset, length):
            return await self._final_of(session)
        raise errors.invalid_argument(wire.MSG_ALREADY_FINALIZED).upload_final()

    async def _final_of(self, session: UploadSession) -> Response:
        """The finalize answer of a finalized session, again; 404 once its File is gone."""
        rec = await run_sync(self.store.get_file, session.project, session.file_id)
        if rec is None:
            raise errors.upload_not_found()
        return _final(self.render(rec), rec.size_bytes)

    # --- files (§2.4 - §2.8) ----------------------------------------------------------------

    async def _requested_file(self, request: Request) -> FileRecord:
        """The File the path names, of the key's project; 403 as for a missing one otherwise."""
        project = self.authenticate(request)
        file_id = request.path_params["file_id"]
        rec = await run_sync(self.store.get_file, project, file_id)
        if rec is None:
            raise errors.file_not_found(file_id)
        return rec

    async def get_file(self, request: Request) -> Response:
        return json_response(self.render(await self._requested_file(request)))

    async def list_files(self, request: Request) -> Response:
        project = self.authenticate(request)
        params = request.query_params
        raw_size = params.get("pageSize", params.get("page_size"))
        try:
            requested = None if raw_size in (None, "") else int(raw_size)
        except ValueError:
            raise errors.invalid_argument(
                wire.MSG_INVALID_PAGE_SIZE.format(value=raw_size)
            ) from None
        token = params.get("pageToken", params.get("page_token"))
        after = None
        if token:
            try:
                after = wire.decode_page_token(token)
            except wire.InvalidPageToken:
                raise errors.invalid_argument(wire.MSG_INVALID_PAGE_TOKEN) from None
        recs, more = await run_sync(
            self.store.list_files, project, wire.clamp_page_size(requested), after
        )
        out: dict[str, object] = {}
        if recs:
            out["files"] = [self.render(r) for r in recs]
            if more:
                out["nextPageToken"] = wire.encode_page_token(recs[-1].create_us, recs[-1].id)
        return json_response(out)

    async def delete_file(self, request: Request) -> Response:
        project = self.authenticate(request)
        file_id = request.path_params["file_id"]
        if len(file_id) > wire.DELETE_ID_MAX_CHARS:
            # §12: the real API cannot delete the long ids other services give their Files.
            raise errors.invalid_argument(wire.MSG_DELETE_ID_TOO_LONG)
        if not await run_sync(self.store.delete_file, project, file_id):
            raise errors.file_not_found(file_id)
        return json_response({})

    async def download(self, request: Request) -> Response:
        rec = await self._requested_file(request)
        if rec.source != wire.SOURCE_GENERATED:
            raise errors.invalid_argument(wire.MSG_DOWNLOAD_NOT_GENERATED)
        if request.query_params.get("alt") != "media":
            # Without alt=media a Google media method answers with its (empty) JSON message.
            return json_response({})
        fd = await run_sync(self.store.open_blob, rec)
        if fd is None:  # deleted between the lookup and the open
            raise errors.file_not_found(rec.id)
        return BlobResponse(fd, os.fstat(fd).st_size, rec.mime_type)

    async def register(self, request: Request) -> Response:
        """§2.8: REGISTERED Files for gs:// URIs (accepted with an API key alone)."""
        project = self.authenticate(request)
        uris = (await self.read_json(request)).get("uris")
        if (
            not isinstance(uris, list)
            or not uris
            or not all(isinstance(u, str) and u.startswith("gs://") and len(u) > 5 for u in uris)
        ):
            raise errors.invalid_argument(wire.MSG_REGISTER_URIS)
        entries = [(None, mimetypes.guess_type(u)[0] or "application/octet-stream") for u in uris]
        recs = await run_sync(self.store.register, project, entries)
        return json_response({"files": [self.render(r) for r in recs]})

    # --- errors outside the routes ----------------------------------------------------------

    async def route_not_found(self, request: Request, exc: Exception) -> Response:
        early = await self.control.admit(request, "other")
        await discard_body(request)
        return early or error_response(errors.not_found())

    async def api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        await discard_body(request)
        return error_response(exc)

    async def unexpected_error(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(errors.internal())

    # --- background -------------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        while True:
            try:
                await run_sync(self.store.sweep)
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.config.sweep_interval_seconds)


def _either(meta: dict, camel: str, snake: str) -> object:
    """§0 item 9: the SDK sends snake_case keys, other clients camelCase; accept both."""
    value = meta.get(camel)
    return meta.get(snake) if value is None else value


def _parse_size(value: object, *, required: bool) -> int | None:
    """The declared size of an upload; None if not given and not `required` (wire
    `UNSIZED_UPLOADS_ACCEPTED`)."""
    if value is None or value == "":
        if not required:
            return None
        raise errors.invalid_argument(wire.MSG_MISSING_SIZE)
    if isinstance(value, bool):
        raise errors.invalid_argument(wire.MSG_INVALID_SIZE.format(value=value))
    try:
        size = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise errors.invalid_argument(wire.MSG_INVALID_SIZE.format(value=value)) from None
    if size < 0:
        raise errors.invalid_argument(wire.MSG_INVALID_SIZE.format(value=value))
    return size


def _content_length(request: Request) -> int | None:
    """The body size the request announced, if it did (not with chunked transfer encoding)."""
    try:
        length = int(request.headers.get("content-length", ""), 10)
    except ValueError:
        return None
    return length if length >= 0 else None


def _key_may_use(request: Request, session: UploadSession) -> bool:
    """Chunk requests need no key (the SDK sends none); one that names a project must name the
    session's, so another project's key cannot touch the session even holding its URL."""
    key = request.headers.get("x-goog-api-key")
    if key is None:
        key = request.query_params.get("key")
    key = (key or "").strip()
    return not key or project_of_key(key) == session.project


def _parse_offset(request: Request, session: UploadSession, commands: set[str]) -> int:
    raw = request.headers.get("x-goog-upload-offset")
    if raw is None and "upload" not in commands:
        return session.received  # a bare `finalize` may omit it
    try:
        offset = int((raw or "").strip(), 10)
    except ValueError:
        offset = -1
    if offset < 0:
        raise errors.invalid_argument(wire.MSG_MISSING_OFFSET).upload_final()
    return offset


def _is_resend(session: UploadSession, offset: int, length: int) -> bool:
    """An exact copy of the last accepted chunk: what the SDK sends when an answer lacked
    `X-Goog-Upload-Status` (§2.3). Accepted again without storing anything."""
    return (
        session.last_offset == offset
        and session.last_length == length
        and offset + length == session.received
    )


def _progress(session: UploadSession) -> WireResponse:
    status = wire.UPLOAD_FINAL if session.finalized else wire.UPLOAD_ACTIVE
    return WireResponse(
        200,
        b"",
        [
            (wire.H_UPLOAD_STATUS, status),
            (wire.H_UPLOAD_SIZE_RECEIVED, str(session.received)),
        ],
    )


def _final(file_json: dict[str, object], size: int) -> WireResponse:
    return json_response(
        {"file": file_json},
        headers={wire.H_UPLOAD_STATUS: wire.UPLOAD_FINAL, wire.H_UPLOAD_SIZE_RECEIVED: str(size)},
    )


def create_app(config: ServerConfig, store: Store, control: Control | None = None) -> Starlette:
    """The ASGI application: CORS in front of the public routes, admin routes if enabled,
    and the sweep task."""
    api = FilesApi(config, store, control or Control(latency_seconds=config.latency_seconds))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(api.sweep_forever())
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = Starlette(
        routes=api.routes(),
        middleware=[Middleware(Cors)],
        exception_handlers={
            HTTPException: api.route_not_found,
            ApiError: api.api_error,
            Exception: api.unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.api = api
    return app
