"""The agent registry: who an agent is, whether it may call, its presence, renewal, revocation.

The gateway calls :meth:`AgentRegistry.identify` on every RPC with the agent id and serial taken
from the peer's certificate: one indexed query answers unknown, revoked agent, revoked serial or
a serial never issued to that agent, so a revocation takes effect on the next call. Presence
(connected, last seen, facts) is telemetry written without an audit row; everything that changes
trust (renewal, revocation, refusals) is audited.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from tundra.core.agents.models import (
    STATUS_ACTIVE,
    STATUS_REVOKED,
    Agent,
    agent_principal,
)
from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso, to_iso
from tundra.core.errors import AgentRefused, InvalidInput, NotFound
from tundra.core.identity.scopes import require_server
from tundra.core.principal import Principal
from tundra.core.uow import UnitOfWork, record_only, unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: (An alias: inside the class ``list`` is the method of that name.)
Networks = list[Network]

#: Seconds a resolved server host name is trusted before it is resolved again.
DNS_CACHE_SECONDS = 60.0
#: One AGENT_REFUSED row per agent (or source) and reason in this window.
REFUSAL_AUDIT_SECONDS = 60
#: Largest facts object stored for an agent (JSON bytes); larger ones are not stored.
MAX_FACTS_BYTES = 16 * 1024
_IN_CHUNK = 500

_AGENT_SELECT = (
    "SELECT a.*, s.name AS server_name, s.address AS server_address FROM agents a"
    " JOIN servers s ON s.id = a.server_id"
)


def _refused(message: str, reason: str, hint: str | None = None) -> AgentRefused:
    return AgentRefused(message, reason=reason, hint=hint)


class AgentRegistry:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._dns: dict[str, tuple[float, Networks]] = {}
        self._dns_lock = threading.Lock()
        self._cidrs: tuple[str, Networks] | None = None

    # -- operator views ------------------------------------------------------------------------

    def list(self, principal: Principal) -> list[Agent]:
        """Every agent (active and revoked) of the servers ``principal`` may see."""
        require_server(self._services, principal, "servers:read", None)
        with self._services.db.read() as tx:
            rows = tx.fetchall(_AGENT_SELECT + " ORDER BY s.name, a.enrolled_at DESC")
        agents = [Agent.from_row(row) for row in rows]
        allowed = principal.resources.get("server")
        if allowed:
            agents = [a for a in agents if a.server_name in allowed]
        return agents

    def for_server(self, principal: Principal, server_name: str) -> Agent | None:
        """The server's active agent, else its newest one; None when none ever enrolled."""
        require_server(self._services, principal, "servers:read", server_name)
        with self._services.db.read() as tx:
            if tx.fetchval("SELECT id FROM servers WHERE name = :n", {"n": server_name}) is None:
                raise NotFound(f"no server named {server_name!r}", hint="see `tundra server list`")
            row = tx.fetchone(
                _AGENT_SELECT + " WHERE s.name = :n ORDER BY CASE WHEN a.status = :active"
                " THEN 0 ELSE 1 END, a.enrolled_at DESC LIMIT 1",
                {"n": server_name, "active": STATUS_ACTIVE},
            )
        return None if row is None else Agent.from_row(row)

    # -- the gateway's hot path ------------------------------------------------------------------

    def identify(self, agent_id: str, serial: str) -> Agent:
        """The agent a certificate names, if it may call now; AgentRefused otherwise.

        Reasons: ``unknown`` (no such agent, or its server was removed), ``revoked``,
        ``serial-unknown`` (a serial never issued to this agent), ``serial-revoked``.
        """
        with self._services.db.read() as tx:
            row = tx.fetchone(
                "SELECT a.*, s.name AS server_name, s.address AS server_address,"
                " c.serial AS presented_serial, c.revoked_at AS serial_revoked_at"
                " FROM agents a JOIN servers s ON s.id = a.server_id"
                " LEFT JOIN agent_certificates c ON c.serial = :serial AND c.agent_id = a.id"
                " WHERE a.id = :id",
                {"id": agent_id, "serial": serial},
            )
        if row is None:
            raise _refused("this agent is not registered", "unknown")
        if row["status"] != STATUS_ACTIVE:
            raise _refused(
                "this agent has been revoked",
                "revoked",
                hint="enroll again with a new join token",
            )
        if row["presented_serial"] is None:
            raise _refused("this certificate was not issued to this agent", "serial-unknown")
        if row["serial_revoked_at"] is not None:
            raise _refused("this certificate has been revoked", "serial-revoked")
        return Agent.from_row(row)

    def trusted_networks(self, agent: Agent) -> Networks:
        """Where ``agent`` may connect from: its server's address (a DNS name resolved, cached
        DNS_CACHE_SECONDS) and the ``agent_trusted_cidrs`` networks."""
        return [*self._address_networks(agent.server_address), *self._configured_networks()]

    def _configured_networks(self) -> Networks:
        text = self._services.settings.agent_trusted_cidrs
        cached = self._cidrs
        if cached is not None and cached[0] == text:
            return cached[1]
        networks = [
            ipaddress.ip_network(part.strip(), strict=False)
            for part in text.split(",")
            if part.strip()
        ]
        self._cidrs = (text, networks)
        return networks

    def _address_networks(self, address: str) -> Networks:
        try:
            return _host_networks(ipaddress.ip_address(address))
        except ValueError:
            pass
        moment = time.monotonic()
        with self._dns_lock:
            cached = self._dns.get(address)
        if cached is not None and cached[0] > moment:
            return cached[1]
        networks: Networks = []
        try:
            infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []  # unresolvable now: only the configured networks are trusted
        for info in infos:
            try:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            except ValueError:
                continue
            for network in _host_networks(ip):
                if network not in networks:
                    networks.append(network)
        with self._dns_lock:
            self._dns[address] = (moment + DNS_CACHE_SECONDS, networks)
        return networks

    def revoked_among(self, agent_ids: Collection[str]) -> set[str]:
        """The ids in ``agent_ids`` that may no longer call: revoked, or gone with their server."""
        wanted = list(dict.fromkeys(agent_ids))
        if not wanted:
            return set()
        active: set[str] = set()
        with self._services.db.read() as tx:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                names = {f"a{i}": value for i, value in enumerate(chunk)}
                # Only generated placeholders go into the text; the ids are parameters.
                placeholders = ", ".join(f":{n}" for n in names)
                sql = f"SELECT id FROM agents WHERE status = :active AND id IN ({placeholders})"  # noqa: S608
                rows = tx.fetchall(sql, {"active": STATUS_ACTIVE, **names})
                active.update(row["id"] for row in rows)
        return set(wanted) - active

    # -- renewal ---------------------------------------------------------------------------------

    def renew(
        self,
        agent_id: str,
        serial: str,
        csr_pem: bytes,
        *,
        source_address: str,
        request_id: str | None = None,
    ) -> tuple[bytes, bytes]:
        """A new certificate for the calling agent (same CSR rules as enrollment): (cert PEM,
        CA bundle PEM). The old serial stays valid until it expires; refusals are audited."""
        from tundra.core.pki import x509 as x

        agent = self.identify(agent_id, serial)
        try:
            try:
                csr = x.load_csr(csr_pem)
            except InvalidInput as exc:
                raise AgentRefused(str(exc), reason="csr-invalid") from exc
            cert = self._services.pki.sign_agent_csr(
                csr, agent_id=agent.id, server_name=agent.server_name
            )
        except AgentRefused as exc:
            self.refuse(agent_id=agent_id, reason=exc.reason, source=source_address, method="Renew")
            raise
        new_serial = x.serial_hex(cert)
        fingerprint = x.fingerprint(cert)
        not_after = to_iso(cert.not_valid_after_utc)
        moment = now_iso()
        with unit_of_work(
            self._services.db, agent_principal(agent_id), request_id=request_id
        ) as uow:
            updated = uow.execute(
                "UPDATE agents SET cert_serial = :serial, cert_fingerprint = :fp,"
                " cert_not_after = :not_after WHERE id = :id AND status = :active",
                {
                    "serial": new_serial,
                    "fp": fingerprint,
                    "not_after": not_after,
                    "id": agent_id,
                    "active": STATUS_ACTIVE,
                },
            )
            if updated:
                uow.execute(
                    "INSERT INTO agent_certificates (serial, agent_id, fingerprint, not_before,"
                    " not_after, issued_at) VALUES (:serial, :aid, :fp, :not_before,"
                    " :not_after, :now)",
                    {
                        "serial": new_serial,
                        "aid": agent_id,
                        "fp": fingerprint,
                        "not_before": to_iso(cert.not_valid_before_utc),
                        "not_after": not_after,
                        "now": moment,
                    },
                )
                uow.record(
                    Action.AGENT_CERT_RENEW,
                    f"server:{agent.server_name}",
                    {
                        "agent_id": agent_id,
                        "serial": new_serial,
                        "fingerprint": fingerprint,
                        "not_after": not_after,
                        "previous_serial": serial,
                        "source": source_address,
                    },
                )
            else:
                # Revoked between identify() and now: the refusal is the only change.
                uow.record(
                    Action.AGENT_REFUSED,
                    f"agent:{agent_id}",
                    {"reason": "revoked", "source": source_address, "method": "Renew"},
                )
        if not updated:
            raise _refused("this agent has been revoked", "revoked")
        return x.cert_to_pem(cert), self._services.pki.ca_bundle_pem()

    # -- presence (telemetry: no audit rows) -----------------------------------------------------

    def mark_connected(
        self,
        agent_id: str,
        *,
        address: str,
        agent_version: str,
        hostname: str,
        facts: Mapping[str, Any],
    ) -> None:
        """A session opened: record when, from where, and what the agent reported."""
        encoded = json.dumps(dict(facts), sort_keys=True, separators=(",", ":"), default=str)
        if len(encoded) > MAX_FACTS_BYTES:
            encoded = "{}"
        moment = now_iso()
        with self._services.db.transaction() as tx:
            tx.execute(
                "UPDATE agents SET connected_at = :now, last_seen_at = :now, last_address = :addr,"
                " agent_version = :version, hostname = :hostname, facts = :facts"
                " WHERE id = :id AND status = :active",
                {
                    "now": moment,
                    "addr": address[:128],
                    "version": agent_version[:64],
                    "hostname": hostname[:253],
                    "facts": encoded,
                    "id": agent_id,
                    "active": STATUS_ACTIVE,
                },
            )

    def touch(self, seen: Mapping[str, tuple[str, str]]) -> None:
        """Record heartbeats: ``{agent_id: (last seen ISO time, address)}`` in one transaction."""
        if not seen:
            return
        with self._services.db.transaction() as tx:
            for agent_id, (last_seen, address) in seen.items():
                tx.execute(
                    "UPDATE agents SET last_seen_at = :seen, last_address = :addr WHERE id = :id",
                    {"seen": last_seen, "addr": address[:128], "id": agent_id},
                )

    def mark_disconnected(self, agent_id: str) -> None:
        """The session ended (last seen stays as it was)."""
        with self._services.db.transaction() as tx:
            tx.execute("UPDATE agents SET connected_at = NULL WHERE id = :id", {"id": agent_id})

    # -- revocation and refusals ---------------------------------------------------------------

    def revoke(
        self, principal: Principal, server_name: str, *, request_id: str | None = None
    ) -> Agent:
        """Revoke the server's active agent and every certificate it holds, at once: its next
        RPC is refused. servers:write on the server; audited."""
        require_server(
            self._services, principal, "servers:write", server_name, request_id=request_id
        )
        moment = now_iso()
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            row = uow.fetchone(
                _AGENT_SELECT + " WHERE s.name = :n AND a.status = :active",
                {"n": server_name, "active": STATUS_ACTIVE},
            )
            if row is None:
                if uow.fetchval("SELECT id FROM servers WHERE name = :n", {"n": server_name}):
                    raise NotFound(
                        f"server {server_name!r} has no active agent",
                        hint="see `tundra server show NAME`",
                    )
                raise NotFound(f"no server named {server_name!r}", hint="see `tundra server list`")
            agent = Agent.from_row(row)
            revoked = revoke_agent_rows(uow, agent.id, moment)
            uow.execute(
                "UPDATE servers SET status = 'revoked', updated_at = :now WHERE id = :sid",
                {"now": moment, "sid": agent.server_id},
            )
            uow.record(
                Action.AGENT_REVOKE,
                f"server:{server_name}",
                {"agent_id": agent.id, "serials": revoked, "reason": "operator"},
            )
            row = uow.fetchone(_AGENT_SELECT + " WHERE a.id = :id", {"id": agent.id})
        self._services.audit.checkpoint_after_sensitive()
        assert row is not None
        return Agent.from_row(row)

    def refuse(self, *, agent_id: str | None, reason: str, source: str, method: str) -> None:
        """Audit a refused call (AGENT_REFUSED): at most one row per agent (or, without an
        identity, per source address) and reason a minute, so a refused agent that keeps
        retrying cannot flood the audit log."""
        gate = f"agent-refused:{agent_id or source}:{reason}"
        if not self._services.kv.set_if_absent(gate, b"1", ttl=REFUSAL_AUDIT_SECONDS):
            return
        record_only(
            self._services.db,
            agent_principal(agent_id),
            Action.AGENT_REFUSED,
            f"agent:{agent_id}" if agent_id else "agent:unidentified",
            {"reason": reason, "source": source, "method": method},
        )


def revoke_agent_rows(uow: UnitOfWork, agent_id: str, moment: str) -> list[str]:
    """Mark an agent and its unrevoked certificates revoked; the serials revoked now."""
    serials = [
        row["serial"]
        for row in uow.fetchall(
            "SELECT serial FROM agent_certificates WHERE agent_id = :id AND revoked_at IS NULL",
            {"id": agent_id},
        )
    ]
    uow.execute(
        "UPDATE agents SET status = :revoked, revoked_at = :now, connected_at = NULL"
        " WHERE id = :id",
        {"revoked": STATUS_REVOKED, "now": moment, "id": agent_id},
    )
    uow.execute(
        "UPDATE agent_certificates SET revoked_at = :now WHERE agent_id = :id"
        " AND revoked_at IS NULL",
        {"now": moment, "id": agent_id},
    )
    return serials


def _host_networks(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Network]:
    """The one-address network of ``ip``; an IPv4 address also as its IPv4-mapped IPv6 form,
    which is how a dual-stack listener reports an IPv4 peer."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks: list[Network] = [ipaddress.ip_network(ip)]
    if isinstance(ip, ipaddress.IPv4Address):
        networks.append(ipaddress.IPv6Network(f"::ffff:{ip}/128"))
    return networks
