"""``tundra agent run``: the agent daemon. It dials the gateway and never listens.

One session at a time over gRPC with mutual TLS 1.3: Hello (facts) up, Welcome down, then
heartbeats and command results up, signed commands and acknowledgements down. Each command goes
through :class:`tundra.agent.guard.CommandGuard` (signature, audience, freshness, nonce) on one
dedicated thread (its nonce cache is a SQLite file, bound to the thread that opened it), then
:func:`tundra.agent.executors.execute` on a small worker pool; the event loop never blocks.

Reconnects use exponential backoff (0.5 s doubling to 60 s) with full jitter, so a fleet that lost
the control plane at once does not come back at once. The certificate is renewed at two thirds of
its life over the Renew RPC with a fresh key; the pair is swapped on disk (see
:mod:`tundra.agent.state`) and the agent reconnects with it. Configuration and credentials are
read again before every connection, so a re-enrollment or a restored backup needs no restart.

Logs are one JSON object per line on stderr: ``ts``, ``level``, ``event`` and the event's fields.
SIGTERM or SIGINT half-closes the stream, cancels the session and exits 0.
"""

from __future__ import annotations

# isort: off
# grpc reads GRPC_SSL_CIPHER_SUITES once, on import. The gateway's value (an RSA-only TLS 1.2
# suite) also makes this client unable to complete a TLS 1.2 handshake with an ECDSA server: the
# agent speaks TLS 1.3 or nothing. Importing tundra.gateway sets it (the package's __init__ is
# light and imports nothing of the control plane).
import tundra.gateway

# isort: on
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc
import grpc.aio

from tundra import __version__
from tundra.agent.config import AgentConfig, load_config
from tundra.agent.enroll import check_issued, new_key_and_csr
from tundra.agent.state import AgentState, Credentials, load_certificates
from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.clock import now_iso
from tundra.core.errors import CommandRefused, InvalidFile, TundraError

T = TypeVar("T")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
#: Until the gateway says otherwise in Welcome.
DEFAULT_HEARTBEAT = 15
#: A session with no message from the gateway for this many heartbeats is dead.
SILENT_HEARTBEATS = 3
#: Hello → Welcome must not take longer than this.
WELCOME_TIMEOUT = 20.0
RENEW_TIMEOUT = 30.0
#: Between failed renewal attempts (the certificate is still valid for a third of its life).
RENEW_RETRY_SECONDS = 60.0
#: How long a shutdown waits for the gateway to see the stream half-closed.
CLOSE_GRACE = 1.0
#: Commands executed at once; more wait in the pool's queue.
WORKERS = 4

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Transport keepalive under the application heartbeats: notices a dead path (NAT timeout)
    # even between heartbeats. 60 s stays far above what the server's ping policy tolerates
    # while the gateway sends heartbeat acknowledgements.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.primary_user_agent", f"tundra-agent/{__version__}"),
    # The daemon reconnects itself (with jitter); a transparent retry would hide refusals.
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 4 << 20),
]

_COMMAND_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_Status = agent_pb2.CommandResult.Status


class JsonLog:
    """One JSON object per line (``ts``, ``level``, ``event``, fields), written atomically."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        record = {"ts": now_iso(), "level": level, "event": event, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False)
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


@dataclass
class SessionEnd:
    """Why a session ended and what the reconnect loop should do about it."""

    welcomed: bool
    #: Reconnect at once (a renewal), else after the backoff.
    immediate: bool = False


class _Liveness(Exception):
    """The gateway fell silent for SILENT_HEARTBEATS heartbeats."""


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base · 2^attempt)]."""
    return rng.uniform(0.0, min(cap, base * (2 ** min(attempt, 32))))


def claimed_command_id(envelope: bytes) -> str:
    """The command id an envelope claims, read without trusting it: a refusal must still name
    the command so the control plane can close it (it checks the id belongs to this agent)."""
    try:
        value = json.loads(envelope).get("command_id", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) and _COMMAND_ID_RE.fullmatch(value) else ""


def claimed_type(envelope: bytes) -> str:
    """The command type an envelope claims, unverified: used only to choose where it runs."""
    try:
        value = json.loads(envelope).get("type", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def command_keys_from(keys: Any) -> dict[str, bytes]:
    """CommandKey messages → {key_id: raw}; InvalidFile when one is malformed."""
    from tundra.core.agents.envelope import key_id_for

    result = {str(k.key_id): bytes(k.public_key) for k in keys}
    for key_id, raw in result.items():
        if len(raw) != 32 or key_id_for(raw) != key_id:
            raise InvalidFile(f"the gateway sent a malformed command key {key_id!r}")
    return result


class AgentDaemon:
    def __init__(
        self,
        config_path: Path,
        *,
        log: JsonLog | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        rng: random.Random | None = None,
    ) -> None:
        self.config_path = config_path
        self.log = log or JsonLog()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._guard: Any = None
        self._guard_agent: str | None = None
        self._guard_lock = threading.Lock()
        self._guard_pool = ThreadPoolExecutor(1, thread_name_prefix="tundra-guard")
        self._work_pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="tundra-work")
        self._last_heard = 0.0
        #: Whether the current session got as far as Welcome (then the backoff starts over).
        self._welcomed = False
        self._command_tasks: set[asyncio.Task[None]] = set()

    # -- entry points --------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); the exit status (0)."""
        tundra.gateway.check_cipher_policy()  # else this client could be talked down to TLS 1.2
        config = load_config(self.config_path)
        AgentState(config.state_dir).load_credentials()  # fail fast on a broken install
        asyncio.run(self._main(handle_signals=handle_signals))
        return 0

    def request_stop(self) -> None:
        """Ask a running daemon to stop (thread-safe)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    # -- the reconnect loop --------------------------------------------------------------

    async def _main(self, *, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        self.log("info", "starting", version=__version__, config=str(self.config_path))
        attempt = 0
        try:
            while not stop.is_set():
                end = await self._attempt()
                if stop.is_set():
                    break
                if end.welcomed:
                    attempt = 0
                if end.immediate:
                    continue
                delay = backoff_delay(
                    attempt, self._rng, base=self.backoff_base, cap=self.backoff_cap
                )
                attempt += 1
                self.log("info", "reconnect-wait", seconds=round(delay, 3), attempt=attempt)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await self._close_guard()
            self._guard_pool.shutdown(wait=False, cancel_futures=True)
            self._work_pool.shutdown(wait=False, cancel_futures=True)
            self.log("info", "stopped")

    def _on_signal(self, signum: int) -> None:
        self.log("info", "signal", signal=signal.Signals(signum).name)
        if self._stop is not None:
            self._stop.set()

    async def _attempt(self) -> SessionEnd:
        """One connection: load state, run the session until it ends or stop is asked."""
        assert self._stop is not None
        self._welcomed = False
        try:
            config = load_config(self.config_path)
            state = AgentState(config.state_dir)
            creds = await self._in(self._work_pool, state.load_credentials)
            keys = await self._in(self._work_pool, state.load_command_keys)
        except TundraError as exc:
            self.log("error", "state-unusable", error=str(exc))
            return SessionEnd(welcomed=False)
        if datetime.now(UTC) >= creds.not_after:
            self.log(
                "error",
                "certificate-expired",
                not_after=creds.not_after.isoformat(),
                hint="the agent was offline past its certificate's life: enroll it again "
                "(tundra server token NAME, then tundra agent enroll)",
            )
            return SessionEnd(welcomed=False)
        session = asyncio.create_task(self._session(config, state, creds, keys))
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not session.done():
            # The session half-closes on its own when it sees stop; give it a moment.
            done, _ = await asyncio.wait({session}, timeout=CLOSE_GRACE + 0.5)
            if not done:
                session.cancel()
        try:
            return await session
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            return SessionEnd(welcomed=self._welcomed)
        except grpc.aio.AioRpcError as exc:
            self._log_rpc_error(exc, config)
            return SessionEnd(welcomed=self._welcomed)
        except _Liveness:
            self.log("warning", "gateway-silent", gateway=config.gateway)
            return SessionEnd(welcomed=self._welcomed)
        except TundraError as exc:
            self.log("error", "session-error", error=str(exc))
            return SessionEnd(welcomed=self._welcomed)
        except TimeoutError:
            self.log("warning", "disconnected", gateway=config.gateway, details="no Welcome")
            return SessionEnd(welcomed=self._welcomed)
        except Exception as exc:
            # Whatever went wrong in one session, the daemon lives on and reconnects.
            self.log("error", "session-crashed", error=repr(exc))
            return SessionEnd(welcomed=self._welcomed)

    def _log_rpc_error(self, exc: grpc.aio.AioRpcError, config: AgentConfig) -> None:
        code = exc.code()
        fields = {"gateway": config.gateway, "code": code.name, "details": exc.details()}
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            self.log(
                "error",
                "refused",
                **fields,
                hint="the control plane refused this agent (revoked, unknown, or an untrusted "
                "source address): check `tundra server show NAME`; re-enroll if it was revoked",
            )
        else:
            self.log("warning", "disconnected", **fields)

    # -- one session ---------------------------------------------------------------------

    async def _session(
        self, config: AgentConfig, state: AgentState, creds: Credentials, keys: dict[str, bytes]
    ) -> SessionEnd:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_bundle_pem,
            private_key=creds.key_pem,
            certificate_chain=creds.cert_pem,
        )
        channel = grpc.aio.secure_channel(config.gateway, credentials, options=CHANNEL_OPTIONS)
        stub = agent_pb2_grpc.AgentGatewayStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Session()
        tasks: set[asyncio.Task[Any]] = set()
        try:
            return await self._converse(call, stub, tasks, config, state, creds, keys)
        except asyncio.InvalidStateError:
            # A write on a call the gateway already ended: report the gateway's status.
            raise grpc.aio.AioRpcError(
                await call.code(),
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=await call.details(),
            ) from None
        finally:
            for task in tasks | self._command_tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self._command_tasks, return_exceptions=True)
            call.cancel()
            await channel.close(grace=None)

    async def _converse(
        self,
        call: Any,
        stub: Any,
        tasks: set[asyncio.Task[Any]],
        config: AgentConfig,
        state: AgentState,
        creds: Credentials,
        keys: dict[str, bytes],
    ) -> SessionEnd:
        assert self._stop is not None
        from tundra.agent import executors

        await self._ensure_guard(config, state, keys)
        facts = await self._in(
            self._work_pool, lambda: executors.facts_message(executors.collect_facts())
        )
        hello = agent_pb2.Hello(agent_id=config.agent_id, agent_version=__version__, facts=facts)
        await call.write(agent_pb2.AgentMessage(hello=hello))
        first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            raise InvalidFile("the gateway did not answer Hello with Welcome")
        welcome = first.welcome
        if welcome.agent_id and welcome.agent_id != config.agent_id:
            raise InvalidFile(f"the gateway welcomed agent {welcome.agent_id!r}, not this one")
        self._welcomed = True
        self._last_heard = time.monotonic()
        heartbeat = max(1, min(welcome.heartbeat_seconds or DEFAULT_HEARTBEAT, 3600))
        await self._apply_welcome(welcome, state)
        self.log(
            "info",
            "connected",
            agent_id=config.agent_id,
            server=config.server_name,
            gateway=config.gateway,
            heartbeat_seconds=heartbeat,
            cert_not_after=creds.not_after.isoformat(),
            renew_at=creds.renew_at.isoformat(),
        )

        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        renew = asyncio.create_task(self._renew_loop(stub, config, state, creds))
        stopper = asyncio.create_task(self._stop.wait())
        tasks.update(
            {
                asyncio.create_task(self._write_loop(call, outbox)),
                asyncio.create_task(self._read_loop(call, outbox, state)),
                asyncio.create_task(self._heartbeat_loop(outbox, heartbeat)),
                renew,
                stopper,
            }
        )
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            self.log("info", "closing", reason="stop")
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await asyncio.wait_for(call.done_writing(), CLOSE_GRACE)
            return SessionEnd(welcomed=True)
        if renew in done and not renew.cancelled() and renew.exception() is None:
            self.log("info", "closing", reason="renewed")
            return SessionEnd(welcomed=True, immediate=True)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        self.log("warning", "disconnected", gateway=config.gateway, details="stream ended")
        return SessionEnd(welcomed=True)

    async def _write_loop(self, call: Any, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        while True:
            await call.write(await outbox.get())

    async def _read_loop(
        self, call: Any, outbox: asyncio.Queue[agent_pb2.AgentMessage], state: AgentState
    ) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            self._last_heard = time.monotonic()
            kind = message.WhichOneof("kind")
            if kind == "command":
                task = asyncio.create_task(self._handle(message.command, outbox))
                self._command_tasks.add(task)
                task.add_done_callback(self._command_tasks.discard)
            elif kind == "welcome":
                await self._apply_welcome(message.welcome, state)

    async def _heartbeat_loop(
        self, outbox: asyncio.Queue[agent_pb2.AgentMessage], seconds: int
    ) -> None:
        sequence = 0
        while True:
            await asyncio.sleep(seconds)
            if time.monotonic() - self._last_heard > SILENT_HEARTBEATS * seconds + 5:
                raise _Liveness()
            sequence += 1
            await outbox.put(
                agent_pb2.AgentMessage(
                    heartbeat=agent_pb2.Heartbeat(
                        sequence=sequence, sent_at_ms=int(time.time() * 1000)
                    )
                )
            )

    # -- commands ------------------------------------------------------------------------

    async def _handle(
        self, signed: agent_pb2.SignedCommand, outbox: asyncio.Queue[agent_pb2.AgentMessage]
    ) -> None:
        from tundra.agent import executors

        started = time.monotonic()
        result = agent_pb2.CommandResult(command_id=claimed_command_id(signed.envelope))
        guard = self._guard
        lock = self._guard_lock

        def check() -> Any:
            # The guard's nonce cache is written by one thread at a time.
            with lock:
                return guard.check(signed)

        def run(command: Any) -> dict[str, Any] | BaseException:
            try:
                return executors.execute(command)
            except Exception as exc:
                return exc

        def check_and_run() -> tuple[Any, dict[str, Any] | BaseException]:
            command = check()
            return command, run(command)

        try:
            if claimed_type(signed.envelope) in executors.INLINE_TYPES:
                # A command without I/O (ping): verify and answer on the loop; the check is a
                # signature verification and one small write to the nonce cache (~0.25 ms).
                # The type is read from the unverified envelope only to choose where to run:
                # the guard verifies everything, and a lie only moves the work to the loop.
                command = check()
                output = run(command) if command.type in executors.INLINE_TYPES else None
                if output is None:
                    output = await self._in(self._work_pool, lambda: run(command))
            else:
                # One hop off the loop for both steps; execution runs unlocked, so slow
                # commands overlap.
                command, output = await self._in(self._work_pool, check_and_run)
        except CommandRefused as exc:
            result.status = _Status.STATUS_REFUSED
            result.error = f"{exc.reason}: {exc.message}"
            self.log(
                "warning",
                "command-refused",
                command_id=result.command_id,
                reason=exc.reason,
                error=exc.message,
            )
            await outbox.put(agent_pb2.AgentMessage(result=result))
            return
        except Exception as exc:
            result.status = _Status.STATUS_REFUSED
            result.error = f"guard-error: {type(exc).__name__}"
            self.log("error", "guard-error", command_id=result.command_id, error=repr(exc))
            await outbox.put(agent_pb2.AgentMessage(result=result))
            return
        result.command_id = command.command_id
        if isinstance(output, TundraError):
            result.status = _Status.STATUS_FAILED
            result.error = str(output)
        elif isinstance(output, BaseException):
            result.status = _Status.STATUS_FAILED
            result.error = f"internal error: {type(output).__name__}"
            self.log("error", "command-crashed", command_id=command.command_id, error=repr(output))
        else:
            result.status = _Status.STATUS_SUCCEEDED
            result.output_json = json.dumps(
                output, sort_keys=True, separators=(",", ":"), default=str
            ).encode()
        self.log(
            "info",
            "command",
            command_id=command.command_id,
            type=command.type,
            status=_Status.Name(result.status),
            ms=round((time.monotonic() - started) * 1000, 1),
            **({"error": result.error} if result.error else {}),
        )
        await outbox.put(agent_pb2.AgentMessage(result=result))

    async def _ensure_guard(
        self, config: AgentConfig, state: AgentState, keys: Mapping[str, bytes]
    ) -> None:
        from tundra.agent.guard import CommandGuard

        if self._guard is not None and self._guard_agent == config.agent_id:
            guard = self._guard
            await self._in(self._guard_pool, lambda: self._locked(guard.update_keys, dict(keys)))
            return
        await self._close_guard()
        self._guard = await self._in(
            self._guard_pool,
            lambda: CommandGuard(
                agent_id=config.agent_id, state_dir=state.dir, public_keys=dict(keys)
            ),
        )
        self._guard_agent = config.agent_id

    def _locked(self, fn: Any, *args: Any) -> Any:
        """Run a guard operation under the lock that command checks take (one at a time)."""
        with self._guard_lock:
            return fn(*args)

    async def _close_guard(self) -> None:
        guard, self._guard, self._guard_agent = self._guard, None, None
        if guard is not None:
            try:
                await self._in(self._guard_pool, lambda: self._locked(guard.close))
            except RuntimeError:  # the pool is shut down already
                guard.close()

    async def _apply_welcome(self, welcome: agent_pb2.Welcome, state: AgentState) -> None:
        """Take the CA bundle and command keys the gateway sent (over the verified channel)."""
        if welcome.ca_bundle_pem:
            current = await self._in(self._work_pool, state.load_ca_bundle)
            if bytes(welcome.ca_bundle_pem) != current:
                await self._in(
                    self._work_pool, lambda: state.store_ca_bundle(welcome.ca_bundle_pem)
                )
                cas = load_certificates(welcome.ca_bundle_pem, source="the gateway's CA bundle")
                self.log("info", "ca-bundle-updated", certificates=len(cas))
        if welcome.command_keys:
            keys = command_keys_from(welcome.command_keys)
            if keys != await self._in(self._work_pool, state.load_command_keys):
                await self._in(self._work_pool, lambda: state.store_command_keys(keys))
                guard = self._guard
                if guard is not None:
                    await self._in(self._guard_pool, lambda: self._locked(guard.update_keys, keys))
                self.log("info", "command-keys-updated", key_ids=sorted(keys))

    # -- renewal -------------------------------------------------------------------------

    async def _renew_loop(
        self, stub: Any, config: AgentConfig, state: AgentState, creds: Credentials
    ) -> None:
        """Return once a renewed pair is on disk (the session then reconnects with it)."""
        while True:
            wait = (creds.renew_at - datetime.now(UTC)).total_seconds()
            if wait > 0:
                # In slices, so a wall clock that jumps is noticed within the hour.
                await asyncio.sleep(min(wait, 3600.0))
                continue
            try:
                await self._renew(stub, config, state, creds)
                return
            except (grpc.aio.AioRpcError, TundraError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                self.log(
                    "warning", "renew-failed", error=detail, not_after=creds.not_after.isoformat()
                )
                await asyncio.sleep(RENEW_RETRY_SECONDS)

    async def _renew(
        self, stub: Any, config: AgentConfig, state: AgentState, creds: Credentials
    ) -> None:
        key, key_pem, csr_pem = await self._in(self._work_pool, new_key_and_csr)
        response = await stub.Renew(agent_pb2.RenewRequest(csr_pem=csr_pem), timeout=RENEW_TIMEOUT)
        bundle = bytes(response.ca_bundle_pem) or creds.ca_bundle_pem
        cert = check_issued(
            bytes(response.certificate_pem), bundle, key=key, agent_id=config.agent_id
        )

        def swap() -> None:
            if response.ca_bundle_pem:
                state.store_ca_bundle(bundle)
            state.store_credentials(key_pem=key_pem, cert_pem=bytes(response.certificate_pem))

        await self._in(self._work_pool, swap)
        self.log(
            "info",
            "renewed",
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.isoformat(),
        )

    # -- helpers -------------------------------------------------------------------------

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)


def run(config_path: Path) -> int:
    """``tundra agent run``: the exit status (0 after SIGTERM/SIGINT). A configuration or state
    that cannot work raises ConfigError/InvalidFile before anything is dialled."""
    return AgentDaemon(config_path).run()
