"""CORS as the real API does it, so that browser scripts (the JS SDK in a page, with an API key)
can use the server: preflights answered, the request's Origin reflected, and the upload headers
exposed so a script can read `X-Goog-Upload-URL` (wire doc §12).

An ASGI middleware in front of the whole application: preflights never reach the routes (they
are not counted, delayed or faulted, and need no key), and every answer to a request that
carries an `Origin` gets the CORS headers added, whatever produced it. The header values are
choices (INF) kept in `wire`.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemfs.server import wire

# Paths the emulated API serves (the admin API is for local tools, not for pages).
_API_PREFIXES = tuple(
    prefix
    for v in wire.API_VERSIONS
    for prefix in (f"/{v}/", f"/upload/{v}/", f"/download/{v}/")
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Cors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if scope["method"] == "OPTIONS" and scope["path"].startswith(_API_PREFIXES):
            await self._preflight(scope, origin, send)
            return
        if origin is None:
            await self.app(scope, receive, send)
            return
        extra = _origin_headers(origin)
        extra.append((b"Access-Control-Expose-Headers", wire.CORS_EXPOSE_HEADERS.encode()))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, origin: str | None, send: Send) -> None:
        """200 with an empty body; what it allows is reflected from what was asked."""
        headers: list[tuple[bytes, bytes]] = []
        if origin is not None:
            headers += _origin_headers(origin)
        headers.append((b"Access-Control-Allow-Methods", wire.CORS_ALLOW_METHODS.encode()))
        requested = _header(scope, b"access-control-request-headers")
        if requested:
            headers.append((b"Access-Control-Allow-Headers", requested.encode("latin-1")))
        headers.append((b"Access-Control-Max-Age", str(wire.CORS_MAX_AGE_SECONDS).encode()))
        headers.append((b"Content-Length", b"0"))
        start: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": headers}
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _origin_headers(origin: str) -> list[tuple[bytes, bytes]]:
    # Vary: a cache must not hand one origin's answer to another.
    return [
        (b"Access-Control-Allow-Origin", origin.encode("latin-1")),
        (b"Vary", b"Origin"),
    ]
