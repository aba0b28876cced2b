"""`make bench` case `resume`: a big upload through gemfs's resumable client (gemfs/upload.py)
against the SDK's `files.upload` with the retry-from-zero loop gemfs had before it, on the same
local `gemfs serve`: once with no faults (time), once with one connection reset on the chunk
that holds the 90 % mark and one lost finalize answer (the server made the File, the answer
never came back): time, bytes re-sent, and Files made.

Both sides go through the same counting httpx transport, which also injects the faults. The
SDK side retries as the old `Remote.upload` did: a new session from byte 0 after each failure,
with the same jittered backoff that gemfs's client uses.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

import httpx
from google import genai
from google.genai import types

from gemfs.remote import Remote

MiB = 1024**2


class Wire(httpx.BaseTransport):
    """Passes requests on, counting the upload bytes put on the wire. With `faults`: resets the
    connection instead of sending the chunk that holds the 90 % mark (once), and drops the
    answer of the first finalize after the server did it."""

    def __init__(self, size: int, faults: bool) -> None:
        self.inner = httpx.HTTPTransport()
        self.size = size
        self.sent = 0
        self.reset_pending = self.drop_pending = faults

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        command = request.headers.get("x-goog-upload-command", "")
        if command.startswith("upload"):
            offset = int(request.headers.get("x-goog-upload-offset", "0"))
            length = int(request.headers.get("content-length", "0"))
            self.sent += length
            if self.reset_pending and offset + length > 0.9 * self.size:
                self.reset_pending = False
                raise httpx.ReadError("connection reset by peer")
            if self.drop_pending and "finalize" in command:
                self.drop_pending = False
                self.inner.handle_request(request).close()
                raise httpx.ReadError("connection reset by peer")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def upload_gemfs(url: str, key: str, fd: int, size: int, name: str, wire: Wire) -> None:
    remote = Remote(key, url, transport=wire)
    try:
        remote.upload_verified(fd, size, name, "application/octet-stream")
    finally:
        remote.close()


def upload_sdk(url: str, key: str, path: str, name: str, wire: Wire) -> None:
    """files.upload, restarted from byte 0 after a failure, as gemfs's Remote did before."""
    client = genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=url, client_args={"transport": wire}))
    delay = 0.25
    try:
        for _ in range(5):
            try:
                client.files.upload(file=path, config={"display_name": name,
                                                       "mime_type": "application/octet-stream"})
                return
            except httpx.TransportError:
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise RuntimeError("the SDK upload failed 5 times")
    finally:
        client.close()


def case(bench: Any) -> list:
    run = sys.modules[type(bench).__module__]  # bench.run, whichever name it was loaded under
    Row = run.Row
    size = bench.sizes.big_bytes
    times: dict[str, list[float]] = {k: [] for k in ("gemfs", "sdk", "gemfs_f", "sdk_f")}
    resent: dict[str, list[float]] = {"gemfs": [], "sdk": []}
    made: dict[str, list[float]] = {"gemfs": [], "sdk": []}
    reqs: dict[str, dict[str, int]] = {}
    with bench.scope("resume") as (stack, root):
        src = root / "big.bin"
        bench.p.say(f"resume: writing the {size / MiB:.0f} MiB source file")
        run.write_random_file(src, size)
        server = bench.server(stack, root, "server")
        sdk = server.sdk()
        fd = os.open(src, os.O_RDONLY)
        stack.callback(os.close, fd)
        url = server.url
        for n in range(bench.runs):
            for side in (("gemfs", "sdk") if n % 2 == 0 else ("sdk", "gemfs")):
                for faults in (False, True):
                    name = f"resume-{side}-{n}-{'faults' if faults else 'clean'}.bin"
                    wire = Wire(size, faults)
                    if side == "gemfs":
                        job = lambda: upload_gemfs(url, run.KEY, fd, size, name, wire)  # noqa: E731
                    else:
                        job = lambda: upload_sdk(url, run.KEY, str(src), name, wire)  # noqa: E731
                    with bench.p.ticking(f"resume run {n + 1}/{bench.runs}: {side}, "
                                         f"{'reset at 90 % + lost finalize' if faults else 'no faults'}"):
                        secs, counts, _ = run.timed(server, job)
                    files = [f for f in sdk.files.list() if f.display_name == name]
                    for f in files:
                        sdk.files.delete(name=f.name)  # keeps the server's disk use flat
                    times[side + ("_f" if faults else "")].append(secs)
                    if faults:
                        resent[side].append((wire.sent - size) / MiB)
                        made[side].append(len(files))
                        reqs[side] = run.nonzero(counts)
                    bench.p.say(f"  {side}: {secs:.2f} s, {(wire.sent - size) / MiB:.0f} MiB "
                                f"re-sent, {len(files)} File(s)")
        del sdk
    med = run.median
    g, s = med(times["gemfs"]), med(times["sdk"])
    chunk_mib = 8
    bench.extra["resume"] = {"bytes": size, "resent_MiB": resent, "files_made": made}
    return [
        Row("resume", f"upload {size / MiB:.0f} MiB, no faults: gemfs client vs files.upload",
            "s", g, s, "ratio <= 1.05", g / s <= 1.05, ratio=g / s,
            samples={"gemfs": times["gemfs"], "sdk": times["sdk"]}),
        Row("resume", "  with a reset at 90 % and a lost finalize answer", "s",
            med(times["gemfs_f"]), med(times["sdk_f"]), "", None,
            ratio=med(times["gemfs_f"]) / med(times["sdk_f"]), requests=reqs,
            samples={"gemfs": times["gemfs_f"], "sdk": times["sdk_f"]}),
        Row("resume", "  bytes re-sent", "MiB", max(resent["gemfs"]), max(resent["sdk"]),
            f"<= {chunk_mib} MiB", max(resent["gemfs"]) <= chunk_mib, samples=resent),
        Row("resume", "  Files made by the one upload", "files", max(made["gemfs"]),
            max(made["sdk"]), "1", max(made["gemfs"]) == 1 and min(made["gemfs"]) == 1,
            samples=made),
    ]
