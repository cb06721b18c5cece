"""The Gateway: the grpc.aio server on :7447 and the work around its live sessions.

It runs in the event loop of ``tundra serve`` beside the panel's listeners. Besides the policy and
the servicer it owns three loops: the dispatcher (every ``gateway_poll_ms``: revoked agents among
the connected ones lose their session at once, queued commands are claimed and pushed down the
right session), and housekeeping (every second: last-seen times flushed to the database every few
seconds, sessions whose certificate expired or whose agent fell silent are ended, the TLS material
re-read when it is due). Every blocking core call runs on the gateway's own threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import grpc

from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.clock import to_iso
from tundra.core.errors import AgentRefused, ConfigError, Conflict, TundraError
from tundra.core.principal import SYSTEM
from tundra.gateway import check_cipher_policy
from tundra.gateway.blocking import Blocking
from tundra.gateway.credentials import CredentialSource
from tundra.gateway.events import event
from tundra.gateway.policy import Caller, Policy, PolicyInterceptor
from tundra.gateway.servicer import AgentGatewayServicer
from tundra.gateway.sessions import LiveSession, SessionRegistry

if TYPE_CHECKING:
    from tundra.core.agents.commands import QueuedCommand
    from tundra.core.services import Services

#: Threads for the policy's identify query, command claims and completions, renewals.
WORKERS = 4
#: Seconds between writes of the in-memory last-seen times (heartbeats never write one by one).
FLUSH_SECONDS = 5.0
#: Seconds between full re-reads of the TLS material (a retired CA leaves the bundle).
CREDENTIALS_MAX_AGE = 60.0
#: Seconds between checks that the gateway certificate is not due (two thirds of its life) and
#: that no previous CA has retired; a reissue is picked up by the next handshake.
ENSURE_SECONDS = 3600.0
#: How often commands delivered to a session that died before answering are marked failed.
UNANSWERED_SECONDS = 10.0
#: An agent unheard for this many heartbeat intervals (plus one, at most 5 s) loses its session.
SILENT_HEARTBEATS = 3
#: Clip agent-supplied strings before they reach the database and the panel.
MAX_TEXT = 256
MAX_ERROR = 2048

STATUSES = {
    agent_pb2.CommandResult.STATUS_SUCCEEDED: "succeeded",
    agent_pb2.CommandResult.STATUS_FAILED: "failed",
    agent_pb2.CommandResult.STATUS_REFUSED: "refused",
}

SERVER_OPTIONS: list[tuple[str, Any]] = [
    # A second `tundra serve` on the same port must fail to bind, not share it silently.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    # An agent needs two streams (Session, Renew); a connection needs no more than a few.
    ("grpc.max_concurrent_streams", 8),
    # Find dead peers even when the agent's heartbeats stop without a FIN.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"gateway_listen {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def facts_dict(facts: agent_pb2.Facts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in facts.DESCRIPTOR.fields:
        value = getattr(facts, field.name)
        if isinstance(value, str):
            value = value[:MAX_TEXT]
        elif not isinstance(value, int | float):
            value = [float(v) for v in list(value)[:3]]
        out[field.name] = value
    return out


@dataclass
class _Waiter:
    agent_id: str
    future: asyncio.Future[dict[str, Any]]
    #: The session the command went down; if it ends, no result can come.
    session: LiveSession | None = None
    #: perf_counter() when the signed command was written to the session, and when its result
    #: arrived: the round trip over the established session, without the audited writes.
    pushed: float = 0.0
    answered: float = 0.0


def _outcome(
    command_id: str, agent_id: str, status: str, output: dict[str, Any] | None, error: str | None
) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "agent_id": agent_id,
        "status": status,
        "output": output,
        "error": error,
    }


class Gateway:
    def __init__(self, services: Services, *, listen: str) -> None:
        self.services = services
        self._listen = listen
        self.pool = Blocking(workers=WORKERS, name="tundra-gateway")
        # One thread: presence writes (connected, seen, disconnected) stay in order.
        self._presence = Blocking(workers=1, name="tundra-gateway-presence")
        self.policy = Policy(services, self.pool)
        self._sessions = SessionRegistry()
        self._waiters: dict[str, _Waiter] = {}
        self._credentials: CredentialSource | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flushed_at = time.monotonic()
        self._ensured_at = time.monotonic()
        self._swept_at = time.monotonic()
        self.port = 0
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and serve; the bound port. ConfigError when the address cannot be bound."""
        try:
            return await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> int:
        check_cipher_policy()
        host, _ = parse_listen(self._listen)
        pki = self.services.pki
        await self.pool(pki.ensure_gateway_cert, SYSTEM)
        source = CredentialSource(
            pki.gateway_credentials,
            lambda: (pki.gateway_cert_path, pki.gateway_key_path, pki.ca_cert_path),
            max_age=CREDENTIALS_MAX_AGE,
        )
        initial = await self.pool(source.initial)
        self._credentials = source
        # The stub types the fetcher as never returning None; None means "keep the current one".
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], source.fetch)
        credentials = grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=True
        )
        server = grpc.aio.server(
            interceptors=[PolicyInterceptor(self.policy)], options=SERVER_OPTIONS
        )
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(  # type: ignore[no-untyped-call]
            AgentGatewayServicer(self), server
        )
        try:
            port = server.add_secure_port(self._listen, credentials)
        except RuntimeError as exc:
            port = 0
            problem = str(exc)
        else:
            problem = "port 0 returned"
        if not port:
            await server.stop(None)
            raise ConfigError(
                f"the agent gateway cannot listen on {self._listen} ({problem})",
                hint="is the address in use? change gateway_listen, or set it empty to disable",
            )
        await server.start()
        self._server = server
        self.port = port
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="tundra-gateway-dispatch"),
            asyncio.create_task(self._housekeeping_loop(), name="tundra-gateway-housekeeping"),
        ]
        event("gateway.started", listen=self._listen, host=host, port=port)
        return port

    async def stop(self, grace: float) -> None:
        """Close every session (agents reconnect elsewhere or later), finish calls in flight
        within ``grace`` seconds, write the last presence, release the threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for session in self._sessions.all():
            session.close(grpc.StatusCode.UNAVAILABLE, "the control plane is shutting down")
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        deadline = time.monotonic() + 2.0
        while len(self._sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for waiter in self._waiters.values():
            waiter.future.cancel()
        try:
            await self._flush()
        except Exception as exc:
            event("gateway.flush-error", level=logging.WARNING, error=repr(exc))
        await asyncio.to_thread(self._presence.shutdown)
        await asyncio.to_thread(self.pool.shutdown)
        event("gateway.stopped", listen=self._listen)

    @property
    def connected_agents(self) -> set[str]:
        return self._sessions.ids()

    # -- sessions (called by the servicer) -------------------------------------------------

    def _welcome_material(self) -> tuple[list[tuple[str, bytes]], bytes]:
        """Command keys and the CA bundle as they are now in the database, not as the TLS
        credentials cached them: an agent connecting just after `tundra ca rotate` must learn
        the new root in this very Welcome."""
        return self.services.command_signer.public_keys(), self.services.pki.ca_bundle_pem()

    async def open_session(
        self, caller: Caller, hello: agent_pb2.Hello
    ) -> tuple[LiveSession, agent_pb2.Welcome]:
        session = LiveSession(caller)
        older = self._sessions.replace(session)
        try:
            await self._presence(
                self.services.agents.mark_connected,
                caller.agent_id,
                address=caller.address,
                agent_version=hello.agent_version[:MAX_TEXT],
                hostname=hello.facts.hostname[:MAX_TEXT],
                facts=facts_dict(hello.facts),
            )
            keys, bundle = await self.pool(self._welcome_material)
        except BaseException:
            self.session_ended(session)
            raise
        welcome = agent_pb2.Welcome(
            agent_id=caller.agent_id,
            heartbeat_seconds=self.services.settings.agent_heartbeat_seconds,
            ca_bundle_pem=bundle,
            command_keys=[agent_pb2.CommandKey(key_id=k, public_key=p) for k, p in keys],
        )
        event(
            "session.opened",
            agent_id=caller.agent_id,
            source=caller.address,
            request_id=caller.request_id,
            replaced=older is not None,
        )
        return session, welcome

    def heard(self, session: LiveSession) -> None:
        session.last_heard = time.monotonic()

    def session_ended(self, session: LiveSession) -> None:
        session.close(None, "ended")
        if self._sessions.remove(session):
            self._presence.submit(self.services.agents.mark_disconnected, session.agent_id)
        for command_id, waiter in self._waiters.items():
            if waiter.session is session and not waiter.future.done():
                waiter.future.set_result(
                    _outcome(command_id, session.agent_id, "sent", None, "the session ended")
                )
        closing = session.closing
        event(
            "session.closed",
            agent_id=session.agent_id,
            request_id=session.caller.request_id,
            reason=closing.reason if closing else "",
            code=closing.code.name if closing and closing.code else "OK",
            seconds=round(time.monotonic() - session.started, 3),
        )

    async def result(self, session: LiveSession, result: agent_pb2.CommandResult) -> None:
        """Record a result; the agent is the certificate's, whatever the message claims."""
        command_id = result.command_id[:MAX_TEXT]
        early = self._waiters.get(command_id)
        if early is not None and not early.answered:
            early.answered = time.perf_counter()
        status = STATUSES.get(result.status)
        error: str | None = result.error[:MAX_ERROR] or None
        output: dict[str, Any] | None = None
        if result.output_json:
            try:
                parsed = json.loads(result.output_json)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                output = parsed
            elif status == "succeeded":
                status, error = "failed", "the agent's output is not a JSON object"
        if status is None:
            status, error = "failed", error or "the agent sent no status"
        try:
            await self.pool(
                self.services.commands.complete,
                session.agent_id,
                command_id,
                status=status,
                output=output,
                error=error,
                request_id=session.caller.request_id,
            )
        except AgentRefused as exc:
            event(
                "command.result-refused",
                level=logging.WARNING,
                agent_id=session.agent_id,
                command_id=command_id,
                reason=exc.reason,
            )
            return
        except TundraError as exc:
            event(
                "command.result-error",
                level=logging.WARNING,
                agent_id=session.agent_id,
                command_id=command_id,
                error=exc.message,
            )
            return
        waiter = self._waiters.get(command_id)
        if waiter is not None and waiter.agent_id == session.agent_id and not waiter.future.done():
            waiter.future.set_result(_outcome(command_id, session.agent_id, status, output, error))

    # -- commands --------------------------------------------------------------------------

    async def execute(
        self,
        agent_id: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Issue a command to a connected agent (as SYSTEM), push it down its session at once
        and wait for the result. The dict has command_id, agent_id, status, output, error and
        round_trip_ms; status is "sent" (with an error) when no result came within ``timeout``."""
        session = self._sessions.get(agent_id)
        if session is None:
            raise Conflict(f"agent {agent_id} is not connected to this gateway")
        started = time.perf_counter()
        record, signed = await self.pool(
            self.services.commands.issue_for_delivery,
            SYSTEM,
            session.caller.agent.server_name,
            type,
            payload,
        )
        if record.agent_id != agent_id:
            raise Conflict(
                f"server {session.caller.agent.server_name} has another active agent now",
                hint="the connected agent was replaced by a new enrollment",
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(agent_id, future)
        self._waiters[record.id] = waiter
        try:
            self._deliver([signed])
            try:
                outcome = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                outcome = _outcome(
                    record.id, agent_id, "sent", None, f"no result within {timeout:g} s"
                )
        finally:
            self._waiters.pop(record.id, None)
        outcome["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if waiter.pushed and waiter.answered:
            outcome["session_round_trip_ms"] = round((waiter.answered - waiter.pushed) * 1000, 3)
        return outcome

    def _deliver(self, claimed: list[QueuedCommand]) -> None:
        for command in claimed:
            session = self._sessions.get(command.agent_id)
            if session is None:
                event("command.undeliverable", level=logging.WARNING, command_id=command.id)
                continue
            signed = agent_pb2.SignedCommand(
                envelope=command.envelope, signature=command.signature, key_id=command.key_id
            )
            session.send(agent_pb2.ControlMessage(command=signed))
            waiter = self._waiters.get(command.id)
            if waiter is not None:
                waiter.session = session
                waiter.pushed = time.perf_counter()

    # -- background loops ----------------------------------------------------------------

    def _poll(self, connected: set[str]) -> tuple[set[str], list[QueuedCommand]]:
        revoked = self.services.agents.revoked_among(connected)
        live = connected - revoked
        return revoked, self.services.commands.claim(live) if live else []

    async def _dispatch_loop(self) -> None:
        interval = max(self.services.settings.gateway_poll_ms, 10) / 1000
        while True:
            await asyncio.sleep(interval)
            connected = self._sessions.ids()
            if not connected:
                continue
            try:
                revoked, claimed = await self.pool(self._poll, connected)
            except Exception as exc:
                event("gateway.poll-error", level=logging.WARNING, error=repr(exc))
                continue
            for agent_id in revoked:
                session = self._sessions.get(agent_id)
                if session is not None:
                    session.close(grpc.StatusCode.PERMISSION_DENIED, "the agent is revoked")
            self._deliver(claimed)

    async def _housekeeping_loop(self) -> None:
        heartbeat = self.services.settings.agent_heartbeat_seconds
        silent_after = SILENT_HEARTBEATS * heartbeat + min(heartbeat, 5)
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            wall = datetime.now(UTC)
            for session in self._sessions.all():
                if wall >= session.caller.certificate.not_after:
                    session.close(
                        grpc.StatusCode.UNAUTHENTICATED, "the client certificate has expired"
                    )
                elif now - session.last_heard > silent_after:
                    session.close(grpc.StatusCode.UNAVAILABLE, "no heartbeat")
            try:
                if now - self._flushed_at >= FLUSH_SECONDS:
                    await self._flush()
                if now - self._swept_at >= UNANSWERED_SECONDS:
                    self._swept_at = now
                    await self.pool(self.services.commands.fail_unanswered)
                if now - self._ensured_at >= ENSURE_SECONDS:
                    self._ensured_at = now
                    await self.pool(self.services.pki.ensure_gateway_cert, SYSTEM)
                if self._credentials is not None:
                    await self.pool(self._credentials.refresh)
            except Exception as exc:
                event("gateway.housekeeping-error", level=logging.WARNING, error=repr(exc))

    async def _flush(self) -> None:
        """Write the last-seen time of every agent heard since the previous flush."""
        since, self._flushed_at = self._flushed_at, time.monotonic()
        now_mono, now_wall = time.monotonic(), datetime.now(UTC)
        seen = {
            session.agent_id: (
                to_iso(now_wall - timedelta(seconds=now_mono - session.last_heard)),
                session.caller.address,
            )
            for session in self._sessions.all()
            if session.last_heard > since
        }
        if seen:
            await self._presence(self.services.agents.touch, seen)
