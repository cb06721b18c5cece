"""Enrollment: one-time join tokens and the exchange of one for an agent certificate.

A join token is ``tjn1.<secret>.<ca fingerprint>``: 32 random bytes (base32, lowercase, no
padding) and the SHA-256 fingerprint of the active CA, which the agent checks the panel's
``/agent/v1/ca.pem`` against before it sends anything. Only SHA-256(secret) is stored; a token
lives JOIN_TOKEN_MINUTES, is consumed by the enrollment that uses it, and a new token for a server
replaces its unused ones.

Enrollment is unauthenticated except by the token, so every refusal is audited
(AGENT_ENROLL_REFUSED) and counted per source address: a source with too many failures is
throttled for a minute, and refusals that name no server (a malformed or unknown token) write at
most one audit row per source and reason a minute, so a flood cannot flood the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tundra.core.agents.models import STATUS_ACTIVE, agent_principal
from tundra.core.agents.registry import revoke_agent_rows
from tundra.core.audit.actions import Action
from tundra.core.clock import from_iso, now, to_iso
from tundra.core.crypto.primitives import constant_time_equal, new_id, random_bytes
from tundra.core.errors import AgentRefused, InvalidInput, NotFound, Throttled
from tundra.core.principal import Principal
from tundra.core.uow import UnitOfWork, record_only, unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

JOIN_TOKEN_MINUTES = 15
TOKEN_PREFIX = "tjn1"  # noqa: S105 - a format marker, not a secret
SECRET_BYTES = 32
#: The variable the printed enroll command reads the token from (never on a command line).
TOKEN_ENV = "TUNDRA_JOIN_TOKEN"  # noqa: S105 - a variable name
_TOKEN = re.compile(r"tjn1\.([a-z2-7]{52})\.([0-9a-f]{64})")

#: Enrollment failures one source address may have in a minute before it is throttled.
MAX_FAILURES_PER_MINUTE = 10
FAILURE_WINDOW_SECONDS = 60
#: Refusals that name no server are audited at most once per source and reason in this window.
AUDIT_WINDOW_SECONDS = 60
MAX_VERSION_LENGTH = 64
MAX_HOSTNAME_LENGTH = 253
_PRINTABLE = re.compile(r"[\x21-\x7e]*")

#: Refusals without a server to name (rate-limited in the audit log).
_ANONYMOUS_REASONS = frozenset({"token-malformed", "token-unknown", "throttled"})


@dataclass(frozen=True)
class JoinToken:
    token: str
    server_name: str
    expires_at: str
    ca_fingerprint: str
    #: Where the agent enrolls (``https://HOST:PORT``), for the hint printed with the token.
    panel_url: str = ""

    def enroll_command(self, *, token_env: str = TOKEN_ENV) -> str:
        """The command to run on the server (the token itself goes in ``token_env``)."""
        return f"tundra agent enroll --url {self.panel_url} --token-env {token_env}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "server_name": self.server_name,
            "expires_at": self.expires_at,
            "ca_fingerprint": self.ca_fingerprint,
            "panel_url": self.panel_url,
            "enroll_command": self.enroll_command(),
        }


@dataclass(frozen=True)
class Enrollment:
    agent_id: str
    server_name: str
    certificate_pem: bytes
    ca_bundle_pem: bytes
    gateway_address: str
    command_keys: list[tuple[str, bytes]]


def parse_join_token(text: str) -> tuple[bytes, str]:
    """(secret, CA fingerprint) of a join token; AgentRefused("token-malformed") otherwise."""
    match = _TOKEN.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise AgentRefused(
            "the join token is malformed",
            reason="token-malformed",
            hint="copy the whole token printed by `tundra server add` or `tundra server token`",
        )
    encoded, fingerprint = match.groups()
    try:
        secret = base64.b32decode(encoded.upper() + "====")
    except ValueError as exc:  # binascii.Error: a non-canonical final character
        raise AgentRefused("the join token is malformed", reason="token-malformed") from exc
    if len(secret) != SECRET_BYTES:
        raise AgentRefused("the join token is malformed", reason="token-malformed")
    return secret, fingerprint


def format_join_token(secret: bytes, fingerprint: str) -> str:
    encoded = base64.b32encode(secret).decode().rstrip("=").lower()
    return f"{TOKEN_PREFIX}.{encoded}.{fingerprint}"


def token_hash(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def insert_join_token(
    services: Services, uow: UnitOfWork, *, server_id: str, server_name: str, created_by: str
) -> JoinToken:
    """Create a join token for a server inside the caller's unit of work (audited).

    The server's earlier unused tokens are deleted: only the newest one printed works.
    """
    from tundra.core.pki.service import CA_NAME

    # Read in the caller's transaction: a second one cannot open inside it.
    fingerprint = uow.fetchval("SELECT fingerprint FROM pki_keys WHERE name = :n", {"n": CA_NAME})
    if fingerprint is None:
        raise NotFound("the internal CA does not exist", hint="run `tundra init`")
    secret = random_bytes(SECRET_BYTES)
    moment = now()
    token_id = new_id()
    expires_at = to_iso(moment + timedelta(minutes=JOIN_TOKEN_MINUTES))
    replaced = uow.execute(
        "DELETE FROM join_tokens WHERE server_id = :sid AND used_at IS NULL", {"sid": server_id}
    )
    uow.execute(
        "INSERT INTO join_tokens (id, server_id, token_hash, ca_fingerprint, created_by,"
        " created_at, expires_at) VALUES (:id, :sid, :hash, :fp, :by, :now, :expires)",
        {
            "id": token_id,
            "sid": server_id,
            "hash": token_hash(secret),
            "fp": fingerprint,
            "by": created_by,
            "now": to_iso(moment),
            "expires": expires_at,
        },
    )
    uow.record(
        Action.JOIN_TOKEN_CREATE,
        f"server:{server_name}",
        {
            "token_id": token_id,
            "expires_at": expires_at,
            "ca_fingerprint": fingerprint,
            "replaced": replaced,
        },
    )
    return JoinToken(
        token=format_join_token(secret, fingerprint),
        server_name=server_name,
        expires_at=expires_at,
        ca_fingerprint=fingerprint,
        panel_url=services.pki.panel_url(),
    )


def _clean_text(value: str, *, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not _PRINTABLE.fullmatch(value):
        raise InvalidInput(f"the {what} must be at most {limit} printable characters")
    return value


class EnrollmentService:
    def __init__(self, services: Services) -> None:
        self._services = services

    def create_join_token(
        self, principal: Principal, server_name: str, *, request_id: str | None = None
    ) -> JoinToken:
        """A new join token for ``server_name`` (servers:write on it); the secret is shown once
        and never audited."""
        from tundra.core.identity.scopes import require

        require(
            self._services,
            principal,
            "servers:write",
            ("server", server_name),
            request_id=request_id,
        )
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            server_id = uow.fetchval(
                "SELECT id FROM servers WHERE name = :name", {"name": server_name}
            )
            if server_id is None:
                raise NotFound(f"no server named {server_name!r}", hint="see `tundra server list`")
            return insert_join_token(
                self._services,
                uow,
                server_id=server_id,
                server_name=server_name,
                created_by=principal.actor,
            )

    # -- the enrollment itself -----------------------------------------------------------------

    def enroll(
        self,
        *,
        join_token: str,
        csr_pem: bytes,
        agent_version: str,
        hostname: str,
        source_address: str,
        request_id: str | None = None,
    ) -> Enrollment:
        """Exchange a join token and a CSR for an agent certificate, in one unit of work.

        Refusals: AgentRefused with reason token-malformed, token-unknown, token-used,
        token-expired, ca-mismatch, csr-invalid or csr-names (each audited), Throttled when the
        source failed too often, InvalidInput for an unusable version or host name.
        """
        self._check_throttle(source_address, request_id=request_id)
        agent_version = _clean_text(agent_version, what="agent version", limit=MAX_VERSION_LENGTH)
        hostname = _clean_text(hostname, what="host name", limit=MAX_HOSTNAME_LENGTH)
        server_name: str | None = None
        try:
            secret, pinned = parse_join_token(join_token)
            token = self._find_token(secret)
            server_name = token["server_name"]
            self._check_token(token, pinned)
            from tundra.core.pki import x509 as x

            try:
                csr = x.load_csr(csr_pem)
            except InvalidInput as exc:
                raise AgentRefused(str(exc), reason="csr-invalid") from exc
            agent_id = new_id()
            cert = self._services.pki.sign_agent_csr(
                csr, agent_id=agent_id, server_name=token["server_name"]
            )
        except AgentRefused as exc:
            self._refused(exc.reason, server_name, source_address, request_id=request_id)
            raise
        enrollment = self._commit(
            token,
            agent_id=agent_id,
            cert=cert,
            agent_version=agent_version,
            hostname=hostname,
            source_address=source_address,
            request_id=request_id,
        )
        if enrollment is None:
            # Another enrollment consumed the token between our check and our write; the
            # refusal was audited in that same unit of work.
            self._count_failure(source_address)
            raise AgentRefused("the join token has been used already", reason="token-used")
        return enrollment

    def _find_token(self, secret: bytes) -> dict[str, Any]:
        with self._services.db.read() as tx:
            row = tx.fetchone(
                "SELECT t.id, t.server_id, t.token_hash, t.ca_fingerprint, t.expires_at,"
                " t.used_at, s.name AS server_name FROM join_tokens t"
                " JOIN servers s ON s.id = t.server_id WHERE t.token_hash = :hash",
                {"hash": token_hash(secret)},
            )
        if row is None:
            raise AgentRefused(
                "the join token is not known",
                reason="token-unknown",
                hint="a newer token for the server replaces older ones; ask for a new one",
            )
        return row

    def _check_token(self, token: dict[str, Any], pinned: str) -> None:
        if token["used_at"] is not None:
            raise AgentRefused(
                "the join token has been used already",
                reason="token-used",
                hint="run `tundra server token NAME` for a new one",
            )
        if from_iso(token["expires_at"]) <= now():
            raise AgentRefused(
                "the join token has expired",
                reason="token-expired",
                hint="run `tundra server token NAME` for a new one",
            )
        active = self._services.pki.ca_fingerprint()
        if not constant_time_equal(pinned, token["ca_fingerprint"]) or not constant_time_equal(
            pinned, active
        ):
            raise AgentRefused(
                "the join token pins a CA that is not the control plane's active CA",
                reason="ca-mismatch",
                hint="the CA was rotated after the token was made: ask for a new token",
            )

    def _commit(
        self,
        token: dict[str, Any],
        *,
        agent_id: str,
        cert: Any,
        agent_version: str,
        hostname: str,
        source_address: str,
        request_id: str | None,
    ) -> Enrollment | None:
        """Write the enrollment; None when the token was consumed meanwhile."""
        from tundra.core.pki import x509 as x

        moment = to_iso(now())
        serial = x.serial_hex(cert)
        fingerprint = x.fingerprint(cert)
        not_after = to_iso(cert.not_valid_after_utc)
        server_name = token["server_name"]
        with unit_of_work(
            self._services.db, agent_principal(agent_id), request_id=request_id
        ) as uow:
            consumed = uow.execute(
                "UPDATE join_tokens SET used_at = :now WHERE id = :id AND used_at IS NULL",
                {"now": moment, "id": token["id"]},
            )
            if not consumed:
                # Another enrollment used it between our check and now: nothing else changes.
                uow.record(
                    Action.AGENT_ENROLL_REFUSED,
                    f"server:{server_name}",
                    {"reason": "token-used", "source": source_address},
                )
            else:
                replaced = self._revoke_previous(uow, token["server_id"], server_name, moment)
                uow.execute(
                    "INSERT INTO agents (id, server_id, status, cert_serial, cert_fingerprint,"
                    " cert_not_after, agent_version, hostname, facts, enrolled_at) VALUES"
                    " (:id, :sid, :status, :serial, :fp, :not_after, :version, :hostname, '{}',"
                    " :now)",
                    {
                        "id": agent_id,
                        "sid": token["server_id"],
                        "status": STATUS_ACTIVE,
                        "serial": serial,
                        "fp": fingerprint,
                        "not_after": not_after,
                        "version": agent_version,
                        "hostname": hostname,
                        "now": moment,
                    },
                )
                uow.execute(
                    "INSERT INTO agent_certificates (serial, agent_id, fingerprint, not_before,"
                    " not_after, issued_at) VALUES (:serial, :aid, :fp, :not_before, :not_after,"
                    " :now)",
                    {
                        "serial": serial,
                        "aid": agent_id,
                        "fp": fingerprint,
                        "not_before": to_iso(cert.not_valid_before_utc),
                        "not_after": not_after,
                        "now": moment,
                    },
                )
                uow.execute(
                    "UPDATE servers SET status = 'enrolled', updated_at = :now WHERE id = :sid",
                    {"now": moment, "sid": token["server_id"]},
                )
                uow.record(
                    Action.AGENT_ENROLL,
                    f"server:{server_name}",
                    {
                        "agent_id": agent_id,
                        "serial": serial,
                        "fingerprint": fingerprint,
                        "not_after": not_after,
                        "source": source_address,
                        "hostname": hostname,
                        "agent_version": agent_version,
                        "replaced": replaced,
                    },
                )
        if not consumed:
            return None
        return Enrollment(
            agent_id=agent_id,
            server_name=server_name,
            certificate_pem=x.cert_to_pem(cert),
            ca_bundle_pem=self._services.pki.ca_bundle_pem(),
            gateway_address=self._services.pki.gateway_address(),
            command_keys=self._services.command_signer.public_keys(),
        )

    @staticmethod
    def _revoke_previous(
        uow: UnitOfWork, server_id: str, server_name: str, moment: str
    ) -> list[str]:
        """Revoke the server's active agents (a re-enrollment replaces them) and their serials."""
        rows = uow.fetchall(
            "SELECT id FROM agents WHERE server_id = :sid AND status = :active",
            {"sid": server_id, "active": STATUS_ACTIVE},
        )
        ids = [row["id"] for row in rows]
        for old in ids:
            serials = revoke_agent_rows(uow, old, moment)
            uow.record(
                Action.AGENT_REVOKE,
                f"server:{server_name}",
                {"agent_id": old, "serials": serials, "reason": "re-enrolled"},
            )
        return ids

    # -- refusals and throttling -----------------------------------------------------------------

    def _failure_key(self, source: str) -> str:
        return f"enroll:failures:{source}"

    def _check_throttle(self, source: str, *, request_id: str | None) -> None:
        kv = self._services.kv
        raw = kv.get(self._failure_key(source))
        if raw is None or int(raw) < MAX_FAILURES_PER_MINUTE:
            return
        left = kv.ttl(self._failure_key(source)) or FAILURE_WINDOW_SECONDS
        self._refused("throttled", None, source, request_id=request_id, count=False)
        raise Throttled(
            "too many failed enrollments from this address",
            retry_after=max(1, int(min(left, FAILURE_WINDOW_SECONDS)) + 1),
            hint="wait a minute and check the join token",
        )

    def _count_failure(self, source: str) -> None:
        self._services.kv.incr(self._failure_key(source), ttl=FAILURE_WINDOW_SECONDS)

    def _refused(
        self,
        reason: str,
        server_name: str | None,
        source: str,
        *,
        request_id: str | None,
        count: bool = True,
    ) -> None:
        if count:
            self._count_failure(source)
        if reason in _ANONYMOUS_REASONS or server_name is None:
            gate = f"enroll:refusal-audited:{source}:{reason}"
            if not self._services.kv.set_if_absent(gate, b"1", ttl=AUDIT_WINDOW_SECONDS):
                return
        record_only(
            self._services.db,
            agent_principal(None),
            Action.AGENT_ENROLL_REFUSED,
            f"server:{server_name}" if server_name else "join-token",
            {"reason": reason, "source": source},
            request_id=request_id,
        )
