"""The command queue: issue signed commands to agents, hand them to the gateway, record results.

A command is one row of ``agent_commands``: queued → sent → succeeded | failed | refused, or
queued → expired. The envelope is built and signed when the command is issued, so what the
gateway delivers is exactly what was audited. The gateway calls :meth:`CommandService.claim`
every few milliseconds for the agents connected to it and :meth:`CommandService.complete` with
each result; an agent's identity there comes from its certificate, never from a message, and a
result is accepted only for a command that was sent to that same agent.

Several gateway processes can share one database: a row moves from ``queued`` to ``sent`` with a
guarded ``UPDATE … WHERE status = 'queued'`` and is delivered only by the process whose update
changed it, so a command goes out at most once on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tundra.core.agents.envelope import build_envelope, validate_payload
from tundra.core.audit.actions import Action
from tundra.core.clock import from_iso, now, now_iso, to_iso
from tundra.core.errors import AgentRefused, Conflict, InvalidInput, NotFound
from tundra.core.identity.scopes import require_server
from tundra.core.principal import SYSTEM, Principal, PrincipalKind
from tundra.core.storage.db import Row
from tundra.core.uow import UnitOfWork, unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

TERMINAL = frozenset({"succeeded", "failed", "refused", "expired"})
#: What an agent may report: it executed (succeeded/failed) or its guard refused.
RESULT_STATUSES = frozenset({"succeeded", "failed", "refused"})

#: The largest result kept (JSON text); a bigger one is recorded as a failure saying so.
MAX_OUTPUT_BYTES = 64 * 1024
#: Error texts come from the agent: kept, but bounded.
MAX_ERROR_CHARS = 2000
#: How often run() looks at the row while it waits.
POLL_SECONDS = 0.02
#: claim() looks at most this many times ``limit`` queued rows per call. The queue holds only
#: commands younger than their TTL (≤ 60 s), so in practice one scan sees all of it.
SCAN_FACTOR = 4
#: At most this many refusal audit rows per agent and reason per minute: a misbehaving agent
#: must not be able to flood the audit chain (the refusal itself always happens).
REFUSAL_AUDITS_PER_MINUTE = 10

_RECORD_SQL = (
    "SELECT c.id, c.agent_id, s.name AS server_name, c.type, c.payload, c.status, c.output,"
    " c.error, c.issued_by, c.request_id, c.created_at, c.expires_at, c.sent_at, c.finished_at"
    " FROM agent_commands c JOIN agents a ON a.id = c.agent_id"
    " JOIN servers s ON s.id = a.server_id"
)

#: The gateway's poll: on the status index, so an empty queue costs one small lookup.
CLAIM_SQL = (
    "SELECT c.id, c.agent_id, c.type, c.expires_at, c.envelope, c.signature, c.key_id,"
    " s.name AS server_name FROM agent_commands c"
    " JOIN agents a ON a.id = c.agent_id JOIN servers s ON s.id = a.server_id"
    " WHERE c.status = 'queued' ORDER BY c.created_at, c.id LIMIT :n"
)


@dataclass(frozen=True)
class CommandRecord:
    id: str
    agent_id: str
    server_name: str
    type: str
    payload: Mapping[str, Any]
    status: str
    output: Mapping[str, Any] | None
    error: str | None
    issued_by: str
    request_id: str
    created_at: str
    expires_at: str
    sent_at: str | None
    finished_at: str | None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def round_trip_ms(self) -> float | None:
        """Milliseconds from issue to result; None until the agent has answered."""
        if self.sent_at is None or self.finished_at is None:
            return None
        delta = from_iso(self.finished_at) - from_iso(self.created_at)
        return delta.total_seconds() * 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "server_name": self.server_name,
            "type": self.type,
            "payload": dict(self.payload),
            "status": self.status,
            "output": None if self.output is None else dict(self.output),
            "error": self.error,
            "issued_by": self.issued_by,
            "request_id": self.request_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "sent_at": self.sent_at,
            "finished_at": self.finished_at,
            "round_trip_ms": self.round_trip_ms,
        }

    @classmethod
    def from_row(cls, row: Row) -> CommandRecord:
        return cls(
            id=row["id"],
            agent_id=row["agent_id"],
            server_name=row["server_name"],
            type=row["type"],
            payload=json.loads(row["payload"]),
            status=row["status"],
            output=None if row["output"] is None else json.loads(row["output"]),
            error=row["error"],
            issued_by=row["issued_by"],
            request_id=row["request_id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            sent_at=row["sent_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True)
class QueuedCommand:
    """A command the gateway must deliver now: the signed envelope as issued."""

    id: str
    agent_id: str
    envelope: bytes
    signature: bytes
    key_id: str


class CommandService:
    def __init__(self, services: Services) -> None:
        self._services = services

    # -- operators -------------------------------------------------------------------------

    def issue(
        self,
        principal: Principal,
        server_name: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> CommandRecord:
        """Queue a signed command for the server's active agent (needs servers:write on it)."""
        record, _ = self._issue(principal, server_name, type, payload, request_id, deliver=False)
        return record

    def issue_for_delivery(
        self,
        principal: Principal,
        server_name: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> tuple[CommandRecord, QueuedCommand]:
        """Issue a command already marked sent, for a gateway that holds the agent's session and
        pushes it at once (no queue round). Same checks and audit row as :meth:`issue`."""
        return self._issue(principal, server_name, type, payload, request_id, deliver=True)

    def _issue(
        self,
        principal: Principal,
        server_name: str,
        type: str,
        payload: Mapping[str, Any] | None,
        request_id: str | None,
        *,
        deliver: bool,
    ) -> tuple[CommandRecord, QueuedCommand]:
        normalized = validate_payload(type, {} if payload is None else payload)
        require_server(
            self._services, principal, "servers:write", server_name, request_id=request_id
        )
        agent_id = self._active_agent(server_name)
        command, envelope = build_envelope(
            agent_id=agent_id,
            type=type,
            payload=normalized,
            ttl_seconds=self._services.settings.command_ttl_seconds,
        )
        # Signed before the write transaction: the signer may read the database itself.
        signature, key_id = self._services.command_signer.sign(envelope)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            # The agent may have been revoked (or re-enrolled) since the lookup above.
            status = uow.fetchval("SELECT status FROM agents WHERE id = :id", {"id": agent_id})
            if status != "active":
                raise Conflict(
                    f"the agent of server {server_name!r} was revoked while the command was made",
                    hint="enroll the server again, then retry",
                )
            record = CommandRecord(
                id=command.command_id,
                agent_id=agent_id,
                server_name=server_name,
                type=type,
                payload=normalized,
                status="sent" if deliver else "queued",
                output=None,
                error=None,
                issued_by=principal.actor,
                request_id=uow.request_id,
                created_at=_iso_ms(command.issued_at_ms),
                expires_at=_iso_ms(command.expires_at_ms),
                sent_at=_iso_ms(command.issued_at_ms) if deliver else None,
                finished_at=None,
            )
            uow.execute(
                "INSERT INTO agent_commands (id, agent_id, type, payload, envelope, signature,"
                " key_id, status, issued_by, request_id, created_at, expires_at, sent_at) VALUES"
                " (:id, :agent_id, :type, :payload, :envelope, :signature, :key_id, :status,"
                " :issued_by, :request_id, :created_at, :expires_at, :sent_at)",
                {
                    "status": record.status,
                    "sent_at": record.sent_at,
                    "id": record.id,
                    "agent_id": agent_id,
                    "type": type,
                    "payload": json.dumps(normalized, sort_keys=True),
                    "envelope": envelope,
                    "signature": signature,
                    "key_id": key_id,
                    "issued_by": record.issued_by,
                    "request_id": record.request_id,
                    "created_at": record.created_at,
                    "expires_at": record.expires_at,
                },
            )
            uow.record(
                Action.COMMAND_ISSUE,
                f"server:{server_name}",
                {
                    "command_id": record.id,
                    "agent_id": agent_id,
                    "type": type,
                    "payload": normalized,
                    "key_id": key_id,
                    "expires_at": record.expires_at,
                },
            )
        return record, QueuedCommand(record.id, agent_id, envelope, signature, key_id)

    def run(
        self,
        principal: Principal,
        server_name: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        timeout: float = 10.0,
        request_id: str | None = None,
    ) -> CommandRecord:
        """Issue a command and wait up to ``timeout`` seconds for its result.

        Returns the record whatever its status then: a front end tells "queued"/"sent" (no answer
        in time) from a result by :attr:`CommandRecord.finished`.
        """
        record = self.issue(principal, server_name, type, payload, request_id=request_id)
        deadline = time.monotonic() + timeout
        while not record.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(POLL_SECONDS, left))
            record = self._load(record.id)
        return record

    def get(
        self, principal: Principal, command_id: str, *, request_id: str | None = None
    ) -> CommandRecord:
        """One command and its result (needs servers:read on its server)."""
        record = self._find(command_id)
        if record is None:
            raise NotFound(f"no command {command_id!r}")
        require_server(
            self._services, principal, "servers:read", record.server_name, request_id=request_id
        )
        return record

    # -- the gateway -----------------------------------------------------------------------

    def claim(self, agent_ids: Collection[str], *, limit: int = 500) -> list[QueuedCommand]:
        """Take the queued commands of ``agent_ids`` for delivery (queued → sent), oldest first.

        Also expires every queued command past its expiry, whoever it is for. With nothing
        queued this is one query on the status index.
        """
        with self._services.db.read() as tx:
            rows = tx.fetchall(CLAIM_SQL, {"n": max(limit, 1) * SCAN_FACTOR})
        if not rows:
            return []
        now = now_iso()
        wanted = agent_ids if isinstance(agent_ids, set | frozenset) else set(agent_ids)
        expired = [r for r in rows if r["expires_at"] <= now]
        ready = [r for r in rows if r["expires_at"] > now and r["agent_id"] in wanted][:limit]
        if expired:
            self._expire(expired)
        if not ready:
            return []
        delivered: list[QueuedCommand] = []
        # Telemetry-like state (no audit row: the issue and the result are audited). The guard
        # on status is what makes delivery at-most-once across gateway processes.
        with self._services.db.transaction() as tx:
            sent_at = now_iso()
            for row in ready:
                changed = tx.execute(
                    "UPDATE agent_commands SET status = 'sent', sent_at = :now"
                    " WHERE id = :id AND status = 'queued'",
                    {"now": sent_at, "id": row["id"]},
                )
                if changed == 1:
                    delivered.append(
                        QueuedCommand(
                            id=row["id"],
                            agent_id=row["agent_id"],
                            envelope=bytes(row["envelope"]),
                            signature=bytes(row["signature"]),
                            key_id=row["key_id"],
                        )
                    )
        return delivered

    def complete(
        self,
        agent_id: str,
        command_id: str,
        *,
        status: str,
        output: Mapping[str, Any] | None,
        error: str | None,
        request_id: str | None = None,
    ) -> None:
        """Record an agent's result for a command that was sent to that same agent.

        Anything else (another agent's command, an unknown id, a command already finished) is
        refused with AgentRefused and audited; a result is never written to someone else's row.
        """
        if status not in RESULT_STATUSES:
            raise InvalidInput(
                f"invalid result status {status!r}",
                hint="one of " + ", ".join(sorted(RESULT_STATUSES)),
            )
        status, output_text, error = _result_fields(status, output, error)
        agent = Principal(PrincipalKind.AGENT, agent_id)
        refusal: AgentRefused | None = None
        with unit_of_work(self._services.db, agent, request_id=request_id) as uow:
            row = uow.fetchone(
                "SELECT c.agent_id, c.status, c.type, s.name AS server_name"
                " FROM agent_commands c JOIN agents a ON a.id = c.agent_id"
                " JOIN servers s ON s.id = a.server_id WHERE c.id = :id",
                {"id": command_id},
            )
            changed = 0
            if row is not None and row["agent_id"] == agent_id and row["status"] == "sent":
                changed = uow.execute(
                    "UPDATE agent_commands SET status = :status, output = :output,"
                    " error = :error, finished_at = :now"
                    " WHERE id = :id AND agent_id = :agent AND status = 'sent'",
                    {
                        "status": status,
                        "output": output_text,
                        "error": error,
                        "now": now_iso(),
                        "id": command_id,
                        "agent": agent_id,
                    },
                )
            if changed == 1:
                assert row is not None
                action = Action.COMMAND_REFUSED if status == "refused" else Action.COMMAND_COMPLETE
                details: dict[str, Any] = {
                    "command_id": command_id,
                    "agent_id": agent_id,
                    "type": row["type"],
                    "status": status,
                }
                if error is not None:
                    details["error"] = error
                uow.record(action, f"server:{row['server_name']}", details)
            else:
                refusal = self._refusal(uow, agent_id, command_id, row)
        if refusal is not None:
            raise refusal

    # -- helpers ---------------------------------------------------------------------------

    def _active_agent(self, server_name: str) -> str:
        # SQL on the agents table (migration 0004) rather than the registry's internals.
        with self._services.db.read() as tx:
            row = tx.fetchone(
                "SELECT s.id AS server_id, a.id AS agent_id FROM servers s"
                " LEFT JOIN agents a ON a.server_id = s.id AND a.status = 'active'"
                " WHERE s.name = :name ORDER BY a.enrolled_at DESC LIMIT 1",
                {"name": server_name},
            )
        if row is None:
            raise NotFound(f"no server named {server_name!r}", hint="see `tundra server list`")
        if row["agent_id"] is None:
            raise Conflict(
                f"server {server_name!r} has no enrolled agent",
                hint=f"run `tundra server token {server_name}` and enroll the agent on the host",
            )
        return str(row["agent_id"])

    def _find(self, command_id: str) -> CommandRecord | None:
        with self._services.db.read() as tx:
            row = tx.fetchone(_RECORD_SQL + " WHERE c.id = :id", {"id": command_id})
        return None if row is None else CommandRecord.from_row(row)

    def _load(self, command_id: str) -> CommandRecord:
        record = self._find(command_id)
        if record is None:  # its server was removed while we waited
            raise NotFound(f"command {command_id!r} no longer exists (was its server removed?)")
        return record

    def fail_unanswered(self, *, grace_seconds: float = 30.0) -> int:
        """Mark sent commands the agent never answered as failed, ``grace_seconds`` after expiry.

        A session can die between delivery and result; the command can no longer run (the agent
        refuses it once expired), so its row must not stay 'sent' forever. Audited like expiry.
        """
        cutoff = to_iso(now() - timedelta(seconds=grace_seconds))
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                "SELECT c.id, c.agent_id, c.type, c.expires_at, s.name AS server_name"
                " FROM agent_commands c JOIN agents a ON a.id = c.agent_id"
                " JOIN servers s ON s.id = a.server_id"
                " WHERE c.status = 'sent' AND c.expires_at < :cutoff ORDER BY c.created_at",
                {"cutoff": cutoff},
            )
        if not rows:
            return 0
        failed = 0
        try:
            with unit_of_work(self._services.db, SYSTEM) as uow:
                stamp = now_iso()
                for row in rows:
                    if uow.execute(
                        "UPDATE agent_commands SET status = 'failed', finished_at = :now,"
                        " error = 'no result from the agent before the command expired'"
                        " WHERE id = :id AND status = 'sent'",
                        {"now": stamp, "id": row["id"]},
                    ):
                        failed += 1
                        uow.record(
                            Action.COMMAND_EXPIRE,
                            f"server:{row['server_name']}",
                            {
                                "command_id": row["id"],
                                "agent_id": row["agent_id"],
                                "type": row["type"],
                                "expires_at": row["expires_at"],
                                "unanswered": True,
                            },
                        )
                if not failed:
                    raise _NothingChanged
        except _NothingChanged:
            return 0  # another gateway failed them first
        return failed

    def _expire(self, rows: list[Row]) -> None:
        try:
            with unit_of_work(self._services.db, SYSTEM) as uow:
                now = now_iso()
                for row in rows:
                    if uow.execute(
                        "UPDATE agent_commands SET status = 'expired', finished_at = :now,"
                        " error = 'expired before the agent received it'"
                        " WHERE id = :id AND status = 'queued'",
                        {"now": now, "id": row["id"]},
                    ):
                        uow.record(
                            Action.COMMAND_EXPIRE,
                            f"server:{row['server_name']}",
                            {
                                "command_id": row["id"],
                                "agent_id": row["agent_id"],
                                "type": row["type"],
                                "expires_at": row["expires_at"],
                            },
                        )
                if not uow.events:
                    raise _NothingChanged  # another gateway expired them first: roll back
        except _NothingChanged:
            pass

    def _refusal(
        self, uow: UnitOfWork, agent_id: str, command_id: str, row: Row | None
    ) -> AgentRefused:
        """The refusal for a result that may not be recorded, with its audit row (rate-bounded)."""
        if row is None:
            reason, action = "unknown-command", Action.AGENT_REFUSED
            details: dict[str, Any] = {}
        elif row["agent_id"] != agent_id:
            reason, action = "cross-agent", Action.COMMAND_CROSS_AGENT
            details = {"owner_agent_id": row["agent_id"]}
        else:
            reason, action = "not-sent", Action.AGENT_REFUSED
            details = {"status": row["status"]}
        if self._audit_refusal(agent_id, reason):
            uow.record(
                action,
                f"command:{command_id}",
                {"reason": reason, "agent_id": agent_id, "command_id": command_id, **details},
            )
        else:
            uow.changed = False  # nothing was written; do not demand an audit row
        # Unknown and foreign ids get the same message: an agent learns nothing about others.
        message = (
            f"command {command_id!r} is not waiting for a result from this agent"
            if reason == "not-sent"
            else f"no command {command_id!r} was sent to this agent"
        )
        return AgentRefused(message, reason=reason)

    def _audit_refusal(self, agent_id: str, reason: str) -> bool:
        key = f"command-refusal:{agent_id}:{reason}"
        return self._services.kv.incr(key, ttl=60.0) <= REFUSAL_AUDITS_PER_MINUTE


class _NothingChanged(Exception):
    pass


def _iso_ms(ms: int) -> str:
    return to_iso(datetime.fromtimestamp(ms / 1000, tz=UTC))


def _result_fields(
    status: str, output: Mapping[str, Any] | None, error: str | None
) -> tuple[str, str | None, str | None]:
    """(status, output JSON text, error) as stored; an unusable output becomes a failure."""
    if error is not None:
        error = str(error)
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
    if status != "succeeded" and not error:
        error = "the agent gave no reason"
    if output is None:
        return status, (json.dumps({}) if status == "succeeded" else None), error
    if not isinstance(output, Mapping):
        return "failed", None, "the agent's output is not a JSON object"
    try:
        text = json.dumps(output, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return "failed", None, "the agent's output is not valid JSON"
    size = len(text.encode())
    if size > MAX_OUTPUT_BYTES:
        return (
            "failed",
            None,
            f"the agent's output was {size} bytes, more than the {MAX_OUTPUT_BYTES}-byte limit",
        )
    return status, text, error
