"""Byte-level HTTP for the wire tests: header names exactly as they left the server, and the
resumable-upload calls spelled out by hand (what the SDK does, minus its forgiveness)."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]  # names in their on-the-wire case, in order
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def raw_request(
    url: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> RawResponse:
    """One HTTP/1.1 exchange over a plain socket (Connection: close)."""
    parts = urlsplit(url)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers_out = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers_out.append((name, value.strip()))
    return RawResponse(int(status_line.split()[1]), headers_out, head, rest)


def start_upload(
    http: httpx.Client,
    key: str,
    size: int,
    mime_type: str = "application/octet-stream",
    *,
    version: str = "v1beta",
    file: dict[str, Any] | None = None,
) -> str:
    """Opens a resumable session like the SDK does; returns the upload URL."""
    response = http.post(
        f"/upload/{version}/files",
        headers={
            "x-goog-api-key": key,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": mime_type,
        },
        json={"file": file or {}},
    )
    assert response.status_code == 200, response.text
    return response.headers["x-goog-upload-url"]


def send_chunk(
    http: httpx.Client, upload_url: str, offset: int, data: bytes, *, finalize: bool = False
) -> httpx.Response:
    command = "upload, finalize" if finalize else "upload"
    return http.post(
        upload_url,
        headers={"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)},
        content=data,
    )


def upload_command(http: httpx.Client, upload_url: str, command: str) -> httpx.Response:
    return http.post(upload_url, headers={"X-Goog-Upload-Command": command})
