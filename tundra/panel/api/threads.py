"""Where the API's blocking core calls run: a dedicated thread pool, never the event loop.

Starlette's ``run_in_threadpool`` (anyio's ``to_thread.run_sync``) does the same job with a
cancel scope, a capacity limiter, a context copy and a queue per worker thread on every call;
under load on these machines that costs about 0.3 ms of CPU per call, a third of an API request
(``bench/panel_api.py``). ``loop.run_in_executor`` on a plain ``ThreadPoolExecutor`` costs a
fraction of it. Each API request makes one hop (token verification and the core call together).

The pool is the process's, shared by every event loop (the test client runs one per request),
so its threads and their database connections live as long as the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: Most core calls running at once (SQLite reads and PostgreSQL queries run in parallel; the
#: rest wait in the pool's queue, off the event loop).
WORKERS = 32

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="tundra-api")
        return _pool


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in the pool and await its result without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)
