"""Streaming a core writer (``export(out, …)``) to the client without holding it in memory.

The core writes to a file-like object from a pool thread (a database read transaction lives
on one thread, so the whole export runs on one). Writes are gathered into chunks of
:data:`CHUNK` bytes and handed to the event loop through a queue; the producer may run at most
:data:`AHEAD` chunks ahead of the client, so a slow client holds back the database read instead of
filling memory. A client that goes away cancels the producer at its next write.

The response starts only when the first chunk (or the end, or an error) is there: an error
raised before any output (a refused scope, a bad filter) is still answered in the JSON error
shape with the right status; one raised later can only cut the stream short.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tundra.panel.api.threads import in_thread

CHUNK = 64 * 1024
AHEAD = 8
#: A client that reads nothing for this long is treated as gone (the producer stops).
STALL_SECONDS = 300.0
_DONE = object()
# asyncio keeps only weak references to tasks: hold the producers until they finish.
_RUNNING: set[asyncio.Task[None]] = set()


class _Cancelled(Exception):
    """The client went away; the producer stops at its next write."""


class _ChunkWriter(io.RawIOBase):
    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        super().__init__()
        self._deliver = deliver
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._buffer += view
        if len(self._buffer) >= CHUNK:
            self.flush()
        return len(view)

    def flush(self) -> None:
        if self._buffer:
            self._deliver(bytes(self._buffer))
            self._buffer.clear()


class Streamed(StreamingResponse):
    """A response whose body ``produce(out)`` writes, from a pool thread."""

    def __init__(
        self,
        produce: Callable[[IO[bytes]], Any],
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._produce = produce
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._credits = threading.Semaphore(AHEAD)
        self._cancelled = threading.Event()
        self._first: object = _DONE
        super().__init__(self._body(), media_type=media_type, headers=headers)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        def deliver(chunk: bytes) -> None:
            waited = 0.0
            while not self._credits.acquire(timeout=0.5):
                waited += 0.5
                if self._cancelled.is_set() or waited >= STALL_SECONDS:
                    raise _Cancelled
            if self._cancelled.is_set():
                raise _Cancelled
            loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

        writer = _ChunkWriter(deliver)
        outcome: object = _DONE
        try:
            self._produce(writer)  # type: ignore[arg-type]
            writer.flush()
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the event loop, re-raised there
            outcome = exc
        loop.call_soon_threadsafe(self._queue.put_nowait, outcome)

    async def started(self) -> None:
        """Start the producer; return at its first chunk, or raise its early error."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(in_thread(self._run, loop))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        try:
            first = await self._queue.get()
        except BaseException:
            self._cancelled.set()
            raise
        if isinstance(first, BaseException):
            raise first
        self._first = first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the response ends (done, client gone, error), the producer stops.
            self._cancelled.set()
            self._credits.release()

    async def _body(self) -> AsyncIterator[bytes]:
        item = self._first
        try:
            while item is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                self._credits.release()
                yield item
                item = await self._queue.get()
        finally:
            self._cancelled.set()
            self._credits.release()  # wake a producer waiting for room
