"""PkiService: the internal CA, its rotation, and the certificates it issues.

The CA's private key lives only in the database, as an envelope bound to ``pki_keys.private_key``
and its row id. The active CA is the row named ``tundra-ca``; ``tundra ca rotate`` renames it,
marks it ``previous`` and keeps it trusted until ``retire_at`` (``ca_overlap_hours``), then it is
``retired`` (flipped lazily, audited once). The CA bundle (active + previous not yet retired) is
what the gateway trusts for agent certificates and what agents trust for the gateway.

Server certificates are files because TLS servers load them from paths: the panel's
(``$TUNDRA_HOME/tls/panel.crt|key``; an operator certificate, ``tls_cert_file``/``tls_key_file``,
takes precedence) and the gateway's (``tls/gateway.crt|key``). Keys are mode 0400 in a 0700
directory. During an overlap each chain file carries, after the leaf issued by the new CA, a
cross certificate per trusted previous CA, so a peer that still trusts only the old root connects.
Agent client certificates are never files here: they go back to the agent in the response.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tundra.core.audit.actions import Action
from tundra.core.clock import from_iso, now, now_iso, to_iso
from tundra.core.crypto.primitives import (
    inspect_secret_file,
    make_private_dir,
    new_id,
    write_secret_file,
)
from tundra.core.errors import ConfigError, Conflict, InvalidFile, NotFound
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM, Principal
from tundra.core.uow import unit_of_work

if TYPE_CHECKING:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives.asymmetric import ec

    from tundra.core.services import Services
    from tundra.core.storage.db import Row

CA_NAME = "tundra-ca"
PANEL_DAYS = 90
GATEWAY_DAYS = 90
DEFAULT_GATEWAY_PORT = 7447
STATUS_ACTIVE = "active"
STATUS_PREVIOUS = "previous"
STATUS_RETIRED = "retired"


@dataclass(frozen=True)
class CertStatus:
    source: str  # "internal" or "operator"
    cert_path: str
    key_path: str
    subject: str
    names: list[str]
    not_before: str
    not_after: str
    days_left: float
    renew_due: bool
    fingerprint: str
    issuer: str
    key_problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CaInfo:
    """One internal CA as ``tundra ca status`` shows it."""

    id: str
    name: str
    status: str  # "active" | "previous" | "retired"
    fingerprint: str
    subject: str
    not_before: str
    not_after: str
    created_at: str
    retire_at: str | None
    #: In the CA bundle: agents and the gateway trust it.
    trusted: bool

    @property
    def retired(self) -> bool:
        return self.status == STATUS_RETIRED

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "retired": self.retired}


@dataclass(frozen=True)
class _LoadedCa:
    id: str
    key: ec.EllipticCurvePrivateKey
    cert: cx509.Certificate


class _NothingRetired(Exception):
    """Another process retired the CA first: roll the empty unit of work back."""


def host_port(text: str, *, setting: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:7447`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{setting} {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PkiService:
    def __init__(self, services: Services) -> None:
        self._services = services
        settings = services.settings
        self.tls_dir = settings.home / "tls"
        # Decrypted CA keys by row id: signing an agent certificate must not pay for the
        # envelope and the PEM parse each time. A row's key never changes, so no invalidation.
        self._keys: dict[str, _LoadedCa] = {}
        self._keys_lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------

    @property
    def panel_cert_path(self) -> Path:
        return Path(self._services.settings.tls_cert_file or self.tls_dir / "panel.crt")

    @property
    def panel_key_path(self) -> Path:
        return Path(self._services.settings.tls_key_file or self.tls_dir / "panel.key")

    @property
    def ca_cert_path(self) -> Path:
        """The CA bundle as a file, for operators and tools that want to trust the panel."""
        return self.tls_dir / "ca.crt"

    @property
    def gateway_cert_path(self) -> Path:
        return self.tls_dir / "gateway.crt"

    @property
    def gateway_key_path(self) -> Path:
        return self.tls_dir / "gateway.key"

    @property
    def operator_managed(self) -> bool:
        return bool(self._services.settings.tls_cert_file)

    # -- the CA --------------------------------------------------------------------------

    def ensure_ca(self, principal: Principal) -> bool:
        """Create the internal CA unless it exists. True when it was created."""
        with self._services.db.read() as tx:
            if tx.fetchone("SELECT id FROM pki_keys WHERE name = :n", {"n": CA_NAME}):
                return False
        key, cert = x.generate_ca()
        row_id = new_id()
        with unit_of_work(self._services.db, principal) as uow:
            self._insert_ca(uow, row_id, key, cert)
            uow.record(Action.PKI_CA_CREATE, f"ca:{CA_NAME}", {"fingerprint": x.fingerprint(cert)})
        return True

    def _insert_ca(
        self, uow: Any, row_id: str, key: ec.EllipticCurvePrivateKey, cert: cx509.Certificate
    ) -> None:
        sealed = self._services.keys.encrypt("pki_keys", "private_key", row_id, x.key_to_pem(key))
        uow.execute(
            "INSERT INTO pki_keys (id, name, cert_pem, private_key, fingerprint, created_at,"
            " not_after, status) VALUES (:id, :name, :cert, :key, :fp, :now, :not_after,"
            " :status)",
            {
                "id": row_id,
                "name": CA_NAME,
                "cert": x.cert_to_pem(cert).decode(),
                "key": sealed,
                "fp": x.fingerprint(cert),
                "now": now_iso(),
                "not_after": to_iso(cert.not_valid_after_utc),
                "status": STATUS_ACTIVE,
            },
        )

    def _load(self, row: Row) -> _LoadedCa:
        with self._keys_lock:
            cached = self._keys.get(row["id"])
        if cached is not None:
            return cached
        pem = self._services.keys.decrypt(
            "pki_keys", "private_key", row["id"], bytes(row["private_key"])
        )
        loaded = _LoadedCa(
            row["id"], x.key_from_pem(pem), x.cert_from_pem(row["cert_pem"].encode())
        )
        with self._keys_lock:
            self._keys[row["id"]] = loaded
        return loaded

    def _active(self) -> _LoadedCa:
        with self._services.db.read() as tx:
            row = tx.fetchone(
                "SELECT id, cert_pem, private_key FROM pki_keys WHERE name = :n", {"n": CA_NAME}
            )
        if row is None:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        return self._load(row)

    def _ca(self) -> tuple[Any, Any]:
        active = self._active()
        return active.key, active.cert

    def _trusted_previous(self) -> list[tuple[_LoadedCa, datetime]]:
        """Previous CAs still trusted now, with their retire_at, newest first."""
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                "SELECT id, cert_pem, private_key, retire_at FROM pki_keys WHERE status = :s"
                " AND retire_at > :now ORDER BY created_at DESC",
                {"s": STATUS_PREVIOUS, "now": now_iso()},
            )
        return [(self._load(row), from_iso(row["retire_at"])) for row in rows]

    def ca_certificate_pem(self) -> bytes:
        """The active CA's certificate (PEM)."""
        with self._services.db.read() as tx:
            pem = tx.fetchval("SELECT cert_pem FROM pki_keys WHERE name = :n", {"n": CA_NAME})
        if pem is None:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        return str(pem).encode()

    def ca_bundle_pem(self) -> bytes:
        """The active CA, then every previous CA whose retire_at is still ahead (PEM)."""
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                "SELECT cert_pem FROM pki_keys WHERE status = :active OR (status = :previous"
                " AND retire_at > :now) ORDER BY CASE WHEN status = :active THEN 0 ELSE 1 END,"
                " created_at DESC",
                {"active": STATUS_ACTIVE, "previous": STATUS_PREVIOUS, "now": now_iso()},
            )
        if not rows:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        return b"".join(str(row["cert_pem"]).encode() for row in rows)

    def ca_fingerprint(self) -> str:
        """SHA-256 of the active CA certificate (DER), lowercase hex: what join tokens pin."""
        with self._services.db.read() as tx:
            fp = tx.fetchval("SELECT fingerprint FROM pki_keys WHERE name = :n", {"n": CA_NAME})
        if fp is None:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        return str(fp)

    def ca_status(self) -> list[CaInfo]:
        """Every CA: the active one first, then previous and retired ones, newest first."""
        self.retire_expired()
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                "SELECT id, name, status, cert_pem, fingerprint, created_at, retire_at"
                " FROM pki_keys ORDER BY CASE WHEN status = :active THEN 0 ELSE 1 END,"
                " created_at DESC",
                {"active": STATUS_ACTIVE},
            )
        now_text = now_iso()
        infos = []
        for row in rows:
            cert = x.cert_from_pem(str(row["cert_pem"]).encode())
            status = row["status"]
            infos.append(
                CaInfo(
                    id=row["id"],
                    name=row["name"],
                    status=status,
                    fingerprint=row["fingerprint"],
                    subject=cert.subject.rfc4514_string(),
                    not_before=to_iso(cert.not_valid_before_utc),
                    not_after=to_iso(cert.not_valid_after_utc),
                    created_at=row["created_at"],
                    retire_at=row["retire_at"],
                    trusted=status == STATUS_ACTIVE
                    or (status == STATUS_PREVIOUS and (row["retire_at"] or "") > now_text),
                )
            )
        return infos

    def retire_expired(self) -> list[str]:
        """Mark previous CAs past retire_at as retired (audited once); their fingerprints.

        Trust never waits for this: the bundle leaves them out as soon as retire_at passes.
        """
        with self._services.db.read() as tx:
            due = tx.fetchall(
                "SELECT id, name, fingerprint, retire_at FROM pki_keys WHERE status = :s"
                " AND retire_at <= :now",
                {"s": STATUS_PREVIOUS, "now": now_iso()},
            )
        if not due:
            return []
        retired: list[str] = []
        try:
            with unit_of_work(self._services.db, SYSTEM) as uow:
                for row in due:
                    changed = uow.execute(
                        "UPDATE pki_keys SET status = :retired WHERE id = :id AND status = :s",
                        {"retired": STATUS_RETIRED, "id": row["id"], "s": STATUS_PREVIOUS},
                    )
                    if changed:
                        uow.record(
                            Action.PKI_CA_RETIRE,
                            f"ca:{row['name']}",
                            {"fingerprint": row["fingerprint"], "retire_at": row["retire_at"]},
                        )
                        retired.append(row["fingerprint"])
                if not retired:
                    raise _NothingRetired
        except _NothingRetired:
            return []
        return retired

    def rotate_ca(self, principal: Principal, *, request_id: str | None = None) -> CaInfo:
        """Make a new active CA; the old one stays trusted for ``ca_overlap_hours``.

        Sensitive (a fresh authentication). Afterwards the panel certificate (when internal) and
        the gateway certificate are reissued by the new CA, their chains carrying the cross
        certificate; agents get the new bundle with their next Welcome or renewal.
        """
        self._services.reauth.require_fresh_auth(principal)
        self.retire_expired()
        old = self._active()
        old_fp = x.fingerprint(old.cert)
        key, cert = x.generate_ca()
        row_id = new_id()
        retire_at = to_iso(now() + timedelta(hours=self._services.settings.ca_overlap_hours))
        archived = f"{CA_NAME}-{old_fp[:16]}"
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            moved = uow.execute(
                "UPDATE pki_keys SET name = :archived, status = :previous, retire_at = :retire"
                " WHERE id = :id AND name = :name",
                {
                    "archived": archived,
                    "previous": STATUS_PREVIOUS,
                    "retire": retire_at,
                    "id": old.id,
                    "name": CA_NAME,
                },
            )
            if moved != 1:
                raise Conflict(
                    "the CA was rotated by someone else meanwhile", hint="see `tundra ca status`"
                )
            self._insert_ca(uow, row_id, key, cert)
            uow.record(
                Action.PKI_CA_ROTATE,
                f"ca:{CA_NAME}",
                {
                    "fingerprint": x.fingerprint(cert),
                    "previous": old_fp,
                    "previous_name": archived,
                    "retire_at": retire_at,
                },
            )
        if not self.operator_managed:
            self.ensure_panel_cert(principal, force=True)
        if self._services.settings.gateway_listen or self.gateway_cert_path.exists():
            self.ensure_gateway_cert(principal, force=True)
        self._write_bundle_file()
        self._services.audit.checkpoint_after_sensitive()
        return next(info for info in self.ca_status() if info.id == row_id)

    def sign_agent_csr(
        self, csr: cx509.CertificateSigningRequest, *, agent_id: str, server_name: str
    ) -> cx509.Certificate:
        """An agent client certificate from the active CA for a CSR that passes the rules."""
        public_key = x.check_agent_csr(csr, server_name=server_name)
        active = self._active()
        return x.issue_agent_cert(
            active.key,
            active.cert,
            public_key=public_key,
            agent_id=agent_id,
            server_name=server_name,
            hours=self._services.settings.agent_cert_hours,
        )

    # -- names -------------------------------------------------------------------------------

    def hostnames(self) -> list[str]:
        names = [n.strip() for n in self._services.settings.panel_hostnames.split(",")]
        return [n for n in names if n]

    def gateway_address(self) -> str:
        """HOST:PORT agents dial: ``gateway_address``, else the first host name + gateway port."""
        settings = self._services.settings
        if settings.gateway_address:
            return settings.gateway_address
        port = DEFAULT_GATEWAY_PORT
        if settings.gateway_listen:
            port = host_port(settings.gateway_listen, setting="gateway_listen")[1]
        return join_host_port(self.hostnames()[0], port)

    def panel_url(self) -> str:
        """The HTTPS URL agents enroll at: the first host name and ``public_https_port``."""
        host = self.hostnames()[0]
        port = self._services.settings.public_https_port
        return (
            "https://"
            + (f"[{host}]" if ":" in host else host)
            + ("" if port == 443 else f":{port}")
        )

    def gateway_names(self) -> list[str]:
        """Names on the gateway certificate: the panel's, plus the host of ``gateway_address``."""
        names = self.hostnames()
        if self._services.settings.gateway_address:
            host = host_port(self._services.settings.gateway_address, setting="gateway_address")[0]
            if host not in names:
                names.append(host)
        return names

    # -- server certificates -----------------------------------------------------------------

    def _chain(self, leaf: cx509.Certificate, active: _LoadedCa) -> bytes:
        """The leaf, then a cross certificate from each previous CA still trusted."""
        pem = x.cert_to_pem(leaf)
        for previous, retire_at in self._trusted_previous():
            pem += x.cert_to_pem(
                x.issue_cross_cert(previous.key, previous.cert, active.cert, not_after=retire_at)
            )
        return pem

    def _write_bundle_file(self) -> None:
        make_private_dir(self.tls_dir)
        write_secret_file(self.ca_cert_path, self.ca_bundle_pem(), mode=0o644, replace=True)

    def _issue_server_files(
        self, cert_path: Path, key_path: Path, names: list[str], *, days: int
    ) -> tuple[cx509.Certificate, cx509.Certificate]:
        """Issue, write the chain and key; (leaf, issuing CA certificate)."""
        active = self._active()
        issued = x.issue_server_cert(active.key, active.cert, names, days=days)
        chain = self._chain(issued.cert, active)
        make_private_dir(self.tls_dir)
        # Key first: a reader that sees the new key with the old certificate retries (see
        # gateway_credentials); one that saw a new certificate with the old key could not.
        write_secret_file(key_path, x.key_to_pem(issued.key), mode=0o400, replace=True)
        write_secret_file(cert_path, chain, mode=0o644, replace=True)
        self._write_bundle_file()
        return issued.cert, active.cert

    def _needs_reissue(self, cert_path: Path, key_path: Path, names: list[str]) -> bool:
        """Missing, due (two thirds of life), for other names, not from the active CA, or a
        chain whose cross certificates no longer match the trusted previous CAs."""
        if not cert_path.exists() or not key_path.exists():
            return True
        try:
            chain = x.certs_from_pem(cert_path.read_bytes())
        except InvalidFile:
            return True
        leaf, crosses = chain[0], chain[1:]
        moment = datetime.now(UTC)
        life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        if leaf.not_valid_after_utc - moment < life / 3:
            return True
        if _normalised(x.san_names(leaf)) != _normalised(names):
            return True
        active = self._active()
        if not x.is_issued_by(leaf, active.cert):
            return True
        trusted = {_key_id(p.cert) for p, _ in self._trusted_previous()}
        present = {_authority_key_id(c) for c in crosses if c.not_valid_after_utc > moment}
        return trusted != present or len(present) != len(crosses)

    def ensure_panel_cert(self, principal: Principal, *, force: bool = False) -> bool:
        """Issue the panel certificate if missing, due for renewal, not from the active CA, or
        ``force``. True if issued. An operator certificate is never touched."""
        if self.operator_managed:
            return False
        names = self.hostnames()
        if not force and not self._needs_reissue(self.panel_cert_path, self.panel_key_path, names):
            return False
        cert, _ = self._issue_server_files(
            self.panel_cert_path, self.panel_key_path, names, days=PANEL_DAYS
        )
        with unit_of_work(self._services.db, principal) as uow:
            uow.record(
                Action.TLS_CERT_ISSUE,
                "tls:panel",
                {
                    "names": names,
                    "fingerprint": x.fingerprint(cert),
                    "not_after": to_iso(cert.not_valid_after_utc),
                },
            )
        return True

    def ensure_gateway_cert(self, principal: Principal, *, force: bool = False) -> bool:
        """Issue the gateway's server certificate (``tls/gateway.crt|key``) when missing, due at
        two thirds of its life, for other names, not issued by the active CA, or ``force``; also
        when a previous CA retired or appeared (its cross certificate). True if issued.

        The gateway calls this at start and now and then; its credential fetcher picks the new
        files up at the next handshake.
        """
        self.retire_expired()
        names = self.gateway_names()
        if not force and not self._needs_reissue(
            self.gateway_cert_path, self.gateway_key_path, names
        ):
            return False
        cert, issuer = self._issue_server_files(
            self.gateway_cert_path, self.gateway_key_path, names, days=GATEWAY_DAYS
        )
        with unit_of_work(self._services.db, principal) as uow:
            uow.record(
                Action.GATEWAY_CERT_ISSUE,
                "tls:gateway",
                {
                    "names": names,
                    "fingerprint": x.fingerprint(cert),
                    "not_after": to_iso(cert.not_valid_after_utc),
                    "issuer": x.fingerprint(issuer),
                },
            )
        return True

    def gateway_credentials(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain PEM, private key PEM, client CA bundle PEM), read fresh each call.

        For the gateway's credential fetcher, which runs before every handshake. Cross
        certificates from a CA no longer trusted are left out (the leaf alone still serves peers
        trusting the new CA) until the next ``ensure_gateway_cert`` rewrites the file.
        """
        from cryptography.hazmat.primitives import serialization

        for _ in range(3):
            try:
                key_pem = self.gateway_key_path.read_bytes()
                chain_pem = self.gateway_cert_path.read_bytes()
            except FileNotFoundError as exc:
                raise ConfigError(
                    f"no gateway certificate at {exc.filename}",
                    hint="it is issued when `tundra serve` starts the gateway",
                ) from exc
            chain = x.certs_from_pem(chain_pem)
            key = x.key_from_pem(key_pem)
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            if key.public_key().public_bytes(*spki) == chain[0].public_key().public_bytes(*spki):
                break
            # Caught between the two writes of a reissue: the certificate follows at once.
            import time

            time.sleep(0.01)
        else:
            raise ConfigError(
                f"{self.gateway_key_path} does not match {self.gateway_cert_path}",
                hint="restart `tundra serve` to issue a new gateway certificate",
            )
        bundle = self.ca_bundle_pem()
        if len(chain) > 1:
            # Only cross certificates from CAs still trusted (a retire_at moved earlier retires
            # a CA before its cross certificate expires).
            trusted = {_key_id(c) for c in x.certs_from_pem(bundle)}
            moment = datetime.now(UTC)
            kept = [chain[0]] + [
                c
                for c in chain[1:]
                if c.not_valid_after_utc > moment and _authority_key_id(c) in trusted
            ]
            if len(kept) != len(chain):
                chain_pem = b"".join(x.cert_to_pem(c) for c in kept)
        return chain_pem, key_pem, bundle

    def status(self) -> CertStatus:
        path = self.panel_cert_path
        if not path.exists():
            raise ConfigError(
                f"no panel certificate at {path}",
                hint="run `tundra tls renew`, or set tls_cert_file/tls_key_file",
            )
        cert = x.cert_from_pem(path.read_bytes())
        moment = datetime.now(UTC)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        left = cert.not_valid_after_utc - moment
        key_problems = [str(p) for p in inspect_secret_file(self.panel_key_path, mode=0o400)]
        return CertStatus(
            source="operator" if self.operator_managed else "internal",
            cert_path=str(path),
            key_path=str(self.panel_key_path),
            subject=cert.subject.rfc4514_string(),
            names=x.san_names(cert),
            not_before=to_iso(cert.not_valid_before_utc),
            not_after=to_iso(cert.not_valid_after_utc),
            days_left=round(left.total_seconds() / 86400, 2),
            # Renew at two thirds of the certificate's life, like agents.
            renew_due=left < life / 3,
            fingerprint=x.fingerprint(cert),
            issuer=cert.issuer.rfc4514_string(),
            key_problems=key_problems,
        )


def _key_id(cert: cx509.Certificate) -> bytes:
    from cryptography import x509 as cx

    return cx.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _authority_key_id(cert: cx509.Certificate) -> bytes | None:
    from cryptography import x509 as cx

    try:
        return cert.extensions.get_extension_for_class(
            cx.AuthorityKeyIdentifier
        ).value.key_identifier
    except cx.ExtensionNotFound:
        return None


def _normalised(names: list[str]) -> list[str]:
    import ipaddress

    result = []
    for name in names:
        try:
            result.append(str(ipaddress.ip_address(name)))
        except ValueError:
            result.append(name.lower())
    return sorted(set(result))
