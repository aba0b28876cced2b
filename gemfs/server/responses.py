"""HTTP responses whose header names reach the socket exactly as written.

Starlette lower-cases header names; the wire doc (§0 item 3, §9.3) wants `X-Goog-Upload-URL`
and friends in their documented case, and uvicorn's h11 writer keeps whatever case the ASGI
headers carry. So every API answer goes through `WireResponse`, which builds the raw header
list itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gemfs.server import errors, wire
from gemfs.server.errors import ApiError
from gemfs.server.store import StoreError

_DOWNLOAD_PIECE = 1024 * 1024


class WireResponse(Response):
    """A response with a complete, case-preserving header list and Content-Length."""

    def __init__(
        self,
        status_code: int = 200,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        items = headers.items() if isinstance(headers, Mapping) else headers
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]
        self.raw_headers.append((b"Content-Length", str(len(body)).encode("latin-1")))


async def discard_body(request: Request) -> int:
    """Reads and drops whatever is left of the request body; returns how many bytes that was.

    Answering before the body is consumed makes a client that is still sending (an 8 MiB
    chunk) fail with a broken pipe instead of reading the answer, so every early answer to a
    request with a body calls this first.
    """
    n = 0
    try:
        async for piece in request.stream():
            n += len(piece)
    except (ClientDisconnect, RuntimeError):  # gone, or the stream was already consumed
        pass
    return n


def json_response(
    payload: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> WireResponse:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    all_headers = {wire.H_CONTENT_TYPE: wire.JSON_CONTENT_TYPE, **(headers or {})}
    return WireResponse(status_code, body, all_headers)


def error_response(err: ApiError) -> WireResponse:
    return json_response(err.body(), err.code, err.headers)


async def failure_response(request: Request, exc: ApiError | StoreError) -> WireResponse:
    """The answer to a request that failed with `exc`, once the rest of its body is drained."""
    await discard_body(request)
    return error_response(exc if isinstance(exc, ApiError) else errors.from_store(exc))


class NoResponse(Response):
    """Sends nothing: used after the connection was aborted on purpose (fault injection).

    It waits for the server to report the disconnect so the server does not mistake the
    silence for an application bug.
    """

    def __init__(self) -> None:
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


class BlobResponse(Response):
    """Streams an already opened file from disk in 1 MiB pieces and closes it.

    Opening before answering means a concurrent delete (which unlinks the blob) cannot turn a
    successful lookup into a half-sent body.
    """

    def __init__(self, fd: int, size: int, media_type: str) -> None:
        self.status_code = 200
        self.background = None
        self._fd = fd
        self._size = size
        self.raw_headers = [
            (b"Content-Type", media_type.encode("latin-1")),
            (b"Content-Length", str(size).encode("latin-1")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:

                async def stop_on_disconnect() -> None:
                    # The server drops writes to a closed connection silently; without this
                    # a vanished client would still have the whole file read from disk.
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(stop_on_disconnect)
                await self._send_all(send)
                tasks.cancel_scope.cancel()
        finally:
            os.close(self._fd)

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        remaining = self._size
        while remaining > 0:
            piece = await anyio.to_thread.run_sync(
                os.read, self._fd, min(_DOWNLOAD_PIECE, remaining)
            )
            if not piece:
                break
            remaining -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
