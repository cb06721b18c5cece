"""The agent as the control plane sees it: one enrollment of one server, and its presence.

Kept free of cryptography and of the services so that listing servers (which shows each server's
agent) stays cheap to import and to run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tundra.core.clock import from_iso
from tundra.core.clock import now as clock_now
from tundra.core.principal import Principal, PrincipalKind
from tundra.core.storage.db import Row

STATUS_ACTIVE = "active"
STATUS_REVOKED = "revoked"

#: An agent unheard for this many heartbeats is shown disconnected.
MISSED_HEARTBEATS = 3

#: Connection states, as shown by `tundra server list` and the panel.
CONNECTED = "connected"
DISCONNECTED = "disconnected"
NEVER = "never"
REVOKED = "revoked"

#: The agents table's columns, in the order ``Agent`` declares them (server name and address
#: come from the joined servers row).
COLUMNS = (
    "id",
    "server_id",
    "status",
    "cert_serial",
    "cert_fingerprint",
    "cert_not_after",
    "agent_version",
    "hostname",
    "facts",
    "connected_at",
    "last_seen_at",
    "last_address",
    "enrolled_at",
    "revoked_at",
)


def agent_principal(agent_id: str | None) -> Principal:
    """Who acts when an agent calls in: named by its id (its certificate is the proof)."""
    return Principal(PrincipalKind.AGENT, agent_id or "unidentified")


@dataclass(frozen=True)
class Agent:
    id: str
    server_id: str
    server_name: str
    server_address: str
    status: str  # "active" | "revoked"
    cert_serial: str
    cert_fingerprint: str
    cert_not_after: str
    agent_version: str
    hostname: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    connected_at: str | None = None
    last_seen_at: str | None = None
    last_address: str | None = None
    enrolled_at: str = ""
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status == STATUS_ACTIVE

    def connection(self, *, heartbeat_seconds: int, now: datetime | None = None) -> str:
        """``revoked``, ``connected`` (a session open and heard from within three heartbeats),
        ``disconnected`` or ``never`` (no session ever)."""
        if self.status == STATUS_REVOKED:
            return REVOKED
        if self.connected_at is None and self.last_seen_at is None:
            return NEVER
        if self.connected_at is not None and self.last_seen_at is not None:
            moment = now or clock_now()
            window = timedelta(seconds=heartbeat_seconds * MISSED_HEARTBEATS)
            if moment - from_iso(self.last_seen_at) <= window:
                return CONNECTED
        return DISCONNECTED

    def as_dict(self, *, heartbeat_seconds: int) -> dict[str, Any]:
        return {
            **self.fields(),
            "connection": self.connection(heartbeat_seconds=heartbeat_seconds),
        }

    def fields(self) -> dict[str, Any]:
        """Every attribute as JSON-ready values (without the computed connection state)."""
        return {
            "id": self.id,
            "server_id": self.server_id,
            "server_name": self.server_name,
            "server_address": self.server_address,
            "status": self.status,
            "cert_serial": self.cert_serial,
            "cert_fingerprint": self.cert_fingerprint,
            "cert_not_after": self.cert_not_after,
            "agent_version": self.agent_version,
            "hostname": self.hostname,
            "facts": dict(self.facts),
            "connected_at": self.connected_at,
            "last_seen_at": self.last_seen_at,
            "last_address": self.last_address,
            "enrolled_at": self.enrolled_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_row(cls, row: Row, *, prefix: str = "") -> Agent:
        """An agent from an agents row joined with its server (``server_name``,
        ``server_address``); ``prefix`` when the agent columns were selected as ``<prefix>id``…"""
        values = {name: row[prefix + name] for name in COLUMNS}
        facts = values.pop("facts")
        parsed = json.loads(facts) if facts else {}
        return cls(
            **values,
            server_name=row["server_name"],
            server_address=row["server_address"],
            facts=parsed if isinstance(parsed, dict) else {},
        )


def _size(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.1f} {unit}" if unit != "B" else f"{int(amount)} B"
        amount /= 1024
    return ""  # pragma: no cover - the loop always returns


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return ""
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def facts_summary(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The facts an agent reported, as (label, text) rows for people (CLI and panel)."""
    if not facts:
        return []

    def text(name: str) -> str:
        value = facts.get(name)
        return str(value) if isinstance(value, str | int | float) else ""

    cpu = " × ".join(p for p in (text("cpu_count"), text("cpu_model")) if p)
    memory = _size(facts.get("memory_total_bytes"))
    if memory and _size(facts.get("memory_available_bytes")):
        memory += f" ({_size(facts.get('memory_available_bytes'))} available)"
    disk = _size(facts.get("disk_total_bytes"))
    if disk and _size(facts.get("disk_free_bytes")):
        disk += f" ({_size(facts.get('disk_free_bytes'))} free)"
    load = facts.get("load_average")
    load_text = (
        " ".join(f"{v:.2f}" for v in load if isinstance(v, int | float))
        if isinstance(load, list)
        else ""
    )
    rows = [
        ("host name", text("hostname")),
        ("os", text("os")),
        ("kernel", text("kernel")),
        ("architecture", text("architecture")),
        ("cpu", cpu),
        ("memory", memory),
        ("disk /", disk),
        ("uptime", _duration(facts.get("uptime_seconds"))),
        ("load", load_text),
    ]
    return [(label, value) for label, value in rows if value]
