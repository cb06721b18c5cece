"""Blocking core calls (database, files) from the gateway's event loop, on dedicated threads.

The gateway shares its event loop with the panel's listeners: a database query on the loop would
stall every TLS handshake and HTTP request in the process, so each one goes to a thread pool of
the gateway's own (not the loop's default executor, which the panel's sync endpoints share).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from tundra.gateway.events import event

P = ParamSpec("P")
T = TypeVar("T")


class Blocking:
    """``await pool(fn, *args, **kwargs)`` runs ``fn`` on one of this pool's threads."""

    def __init__(self, *, workers: int, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Run ``fn`` without waiting for it; a failure is logged. With one worker, calls keep
        their order (presence updates rely on it)."""
        future = self._executor.submit(fn, *args, **kwargs)
        future.add_done_callback(self._report)

    def _report(self, future: Future[object]) -> None:
        if not future.cancelled() and future.exception() is not None:
            event(
                "gateway.background-error",
                level=logging.WARNING,
                pool=self.name,
                error=repr(future.exception()),
            )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
