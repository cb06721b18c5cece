"""Live agent sessions: at most one per agent, each with its own outbound queue.

Everything here runs on the event loop (no locks). A session is ended from outside (revoked,
replaced, certificate expired, silent, shutting down) by :meth:`LiveSession.close`, which the
session's own task notices at once, even while a write is blocked on flow control.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from tundra.agent.v1 import agent_pb2
from tundra.gateway.policy import Caller


@dataclass(frozen=True)
class Closing:
    code: grpc.StatusCode | None
    reason: str


class LiveSession:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.outbox: asyncio.Queue[agent_pb2.ControlMessage] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.closing: Closing | None = None
        self.started = time.monotonic()
        self.last_heard = self.started

    @property
    def agent_id(self) -> str:
        return self.caller.agent_id

    def send(self, message: agent_pb2.ControlMessage) -> None:
        if not self.closed.is_set():
            self.outbox.put_nowait(message)

    def close(self, code: grpc.StatusCode | None, reason: str) -> None:
        """End the session: ``code`` None ends it with OK, else the call is aborted with it."""
        if self.closing is None:
            self.closing = Closing(code, reason)
            self.closed.set()


class SessionRegistry:
    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}

    def __len__(self) -> int:
        return len(self._live)

    def get(self, agent_id: str) -> LiveSession | None:
        return self._live.get(agent_id)

    def ids(self) -> set[str]:
        return set(self._live)

    def all(self) -> list[LiveSession]:
        return list(self._live.values())

    def replace(self, session: LiveSession) -> LiveSession | None:
        """Make ``session`` the agent's live one; the older one (returned) is closed."""
        older = self._live.get(session.agent_id)
        self._live[session.agent_id] = session
        if older is not None:
            older.close(grpc.StatusCode.ABORTED, "replaced by a newer session of this agent")
        return older

    def remove(self, session: LiveSession) -> bool:
        """Forget ``session`` if it is still the agent's live one (True), not a replaced one."""
        if self._live.get(session.agent_id) is session:
            del self._live[session.agent_id]
            return True
        return False
