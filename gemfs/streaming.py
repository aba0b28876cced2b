"""Uploading a file while it is still being written, so that its close waits for the last chunk
only, not for the whole file (docs/SEMANTICS.md, "Uploads that start before the close").

A `Streamer` owns one `UploadStream` (gemfs/upload.py: a resumable session started with no size)
and a thread that sends every whole chunk of the staged file as soon as it is written. The bytes
it has taken (`claimed`) must not change any more, since the session may hold them: a write or
truncate below that mark breaks the stream (its session is cancelled, never finalized, so it is
never a File) and the file then goes up whole at its close, as without a stream. The close
finalizes the stream (`finish`): nothing but a close or fsync ever makes the File, and upload
errors still reach them.

Lock: `_cond` (the stream lock) guards `_available`, `_claimed` and `_state`. Writers take it
while they hold the file's lock (fs.Pending.lock), the thread alone; it is never held over I/O or
a network call. The stream reads through its own duplicate of the staged descriptor, so a
staged file closed or discarded meanwhile cannot hand it another file's bytes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from gemfs.errors import GemfsError
from gemfs.upload import UploadResult, UploadStream, redact

log = logging.getLogger(__name__)

RUNNING, FINISHING, BROKEN = "running", "finishing", "broken"


class Streamer:
    """One file's upload stream and the thread that feeds it (see the module's docstring)."""

    def __init__(self, open_stream: Callable[[int], UploadStream | None], fd: int, size: int,
                 display_name: str, mime_type: str) -> None:
        """`open_stream(fd)` makes the UploadStream reading `fd` (None: the server wants sizes);
        `size` is what the staged file holds now."""
        self.display_name, self.mime_type = display_name, mime_type
        self._fd = os.dup(fd)
        self._cond = threading.Condition()
        self._available = size  # stream lock: the staged file's size, as writers last said
        self._claimed = 0  # stream lock: bytes handed to the session; they must stay as they are
        self._state = RUNNING  # stream lock
        self._thread: threading.Thread | None = None
        self._started = time.time()
        self._stream: UploadStream | None = None
        try:
            self._stream = open_stream(self._fd)
            if self._stream is not None:
                self._thread = threading.Thread(target=self._run, name="gemfs-stream",
                                                daemon=True)
                self._thread.start()
        except BaseException:  # (no thread to start: RuntimeError) the dup must not leak
            self._thread = None
            self._close_fd()
            raise
        if self._stream is None:
            self._state = BROKEN
            self._close_fd()

    @property
    def live(self) -> bool:
        with self._cond:
            return self._state == RUNNING

    def progress(self) -> dict:
        """For `gemfs status`: the file's name, bytes written so far and bytes sent."""
        with self._cond:
            size = self._available
        sent = self._stream.sent if self._stream is not None else 0
        return {"path": self.display_name, "size": size, "sent": sent, "started": self._started,
                "writing": True}

    def wrote(self, offset: int, size: int) -> bool:
        """A write at `offset` left the file `size` bytes long. False (and the stream is
        broken) when it changed bytes the session may already hold."""
        return self._moved(offset, size)

    def truncated(self, length: int) -> bool:
        """The file was cut or grown to `length` bytes; False (broken) when below `claimed`."""
        return self._moved(length, length)

    def _moved(self, lowest: int, size: int) -> bool:
        with self._cond:
            if self._state != RUNNING:
                return False
            if lowest < self._claimed:
                self._state = BROKEN
                self._cond.notify_all()
                return False
            self._available = size
            self._cond.notify_all()
            return True

    def abandon(self) -> None:
        """The file will not go up through this stream: its thread cancels the session and
        ends. Does not wait for it."""
        with self._cond:
            if self._state == RUNNING:
                self._state = BROKEN
                self._cond.notify_all()

    def wait(self) -> None:
        """After `abandon`: wait until the thread has ended (its session cancelled, one request
        at most, bounded by the request timeout)."""
        if self._thread is not None:
            self._thread.join()

    def finish(self, size: int, progress: Callable[[int], None] | None = None) -> UploadResult:
        """The file is closed at `size` bytes: stop the thread (after its chunk in flight),
        send the rest and finalize. Raises GemfsError as `Uploader.upload` does."""
        with self._cond:
            if self._state != RUNNING or self._stream is None:
                raise RuntimeError("finish of a stream that is not running")
            self._state = FINISHING
            self._cond.notify_all()
        assert self._thread is not None
        self._thread.join()
        try:
            return self._stream.finish(size, progress)
        finally:
            self._close_fd()

    def _stopping(self) -> bool:
        with self._cond:
            return self._state != RUNNING

    def _run(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            stream.start()
        except Exception as e:  # (never let the thread die: the fd and session need it)
            log.info("upload of %s not started before its close (%s); it goes up at the close",
                     self.display_name, _said(e))
        else:
            self._feed(stream)
        with self._cond:
            while self._state == RUNNING:
                self._cond.wait()
            broken = self._state == BROKEN
        if broken:
            try:
                stream.cancel()
            except Exception as e:
                log.info("upload of %s: cancel failed (%s)", self.display_name, _said(e))
            finally:
                self._close_fd()

    def _feed(self, stream: UploadStream) -> None:
        """Send whole chunks as they are written, until the close or a break; after a failed
        request, stop (the close resolves the session by asking it where it is)."""
        chunk = stream.chunk
        while True:
            with self._cond:
                while self._state == RUNNING and self._available - self._claimed < chunk:
                    self._cond.wait()
                if self._state != RUNNING:
                    return
                upto = self._available - (self._available - self._claimed) % chunk
                self._claimed = upto
            try:
                stream.send(upto, self._stopping)
            except Exception as e:
                log.info("upload of %s paused at %d bytes (%s); its close goes on from there",
                         self.display_name, stream.sent, _said(e))
                return

    def _close_fd(self) -> None:  # (the thread's, or finish's once the thread has ended)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _said(e: Exception) -> str:
    """An exception in one line for the log: gemfs's own say what failed; others (an httpx
    error may quote a URL) only their kind, with any upload_id blanked."""
    return str(e) if isinstance(e, GemfsError) else f"{type(e).__name__}: {redact(str(e))}"
