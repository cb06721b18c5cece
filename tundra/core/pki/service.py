"""PkiService: the internal CA (key encrypted with the envelope) and the panel's certificate.

The CA's private key lives only in the database, as an envelope bound to ``pki_keys.private_key``
and its row id. The panel's key is a file (``$TUNDRA_HOME/tls/panel.key``, mode 0400, in a 0700
directory) because the TLS server loads it from a path. An operator certificate
(``tls_cert_file``/``tls_key_file``) takes precedence over the internal one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso, to_iso
from tundra.core.crypto.primitives import (
    inspect_secret_file,
    make_private_dir,
    new_id,
    write_secret_file,
)
from tundra.core.errors import ConfigError, NotFound
from tundra.core.pki import x509 as x
from tundra.core.principal import Principal
from tundra.core.uow import unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

CA_NAME = "tundra-ca"
PANEL_DAYS = 90


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


class PkiService:
    def __init__(self, services: Services) -> None:
        self._services = services
        settings = services.settings
        self.tls_dir = settings.home / "tls"

    # -- paths ---------------------------------------------------------------------------

    @property
    def panel_cert_path(self) -> Path:
        return Path(self._services.settings.tls_cert_file or self.tls_dir / "panel.crt")

    @property
    def panel_key_path(self) -> Path:
        return Path(self._services.settings.tls_key_file or self.tls_dir / "panel.key")

    @property
    def ca_cert_path(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def operator_managed(self) -> bool:
        return bool(self._services.settings.tls_cert_file)

    # -- the CA --------------------------------------------------------------------------

    def ensure_ca(self, principal: Principal) -> bool:
        """Create the internal CA unless it exists. True when it was created."""
        with self._services.db.read() as tx:
            if tx.fetchone("SELECT id FROM pki_keys WHERE name = :n", {"n": CA_NAME}):
                return False
        key, cert = x.generate_ca("Tundra internal CA")
        row_id = new_id()
        sealed = self._services.keys.encrypt("pki_keys", "private_key", row_id, x.key_to_pem(key))
        with unit_of_work(self._services.db, principal) as uow:
            uow.execute(
                "INSERT INTO pki_keys (id, name, cert_pem, private_key, fingerprint, created_at,"
                " not_after) VALUES (:id, :name, :cert, :key, :fp, :now, :not_after)",
                {
                    "id": row_id,
                    "name": CA_NAME,
                    "cert": x.cert_to_pem(cert).decode(),
                    "key": sealed,
                    "fp": x.fingerprint(cert),
                    "now": now_iso(),
                    "not_after": to_iso(cert.not_valid_after_utc),
                },
            )
            uow.record(Action.PKI_CA_CREATE, f"ca:{CA_NAME}", {"fingerprint": x.fingerprint(cert)})
        return True

    def _ca(self) -> tuple[Any, Any]:
        with self._services.db.read() as tx:
            row = tx.fetchone("SELECT * FROM pki_keys WHERE name = :n", {"n": CA_NAME})
        if row is None:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        pem = self._services.keys.decrypt(
            "pki_keys", "private_key", row["id"], bytes(row["private_key"])
        )
        return x.key_from_pem(pem), x.cert_from_pem(row["cert_pem"].encode())

    def ca_certificate_pem(self) -> bytes:
        with self._services.db.read() as tx:
            pem = tx.fetchval("SELECT cert_pem FROM pki_keys WHERE name = :n", {"n": CA_NAME})
        if pem is None:
            raise NotFound("the internal CA does not exist", hint="run `tundra init`")
        return str(pem).encode()

    # -- the panel certificate -------------------------------------------------------------

    def hostnames(self) -> list[str]:
        names = [n.strip() for n in self._services.settings.panel_hostnames.split(",")]
        return [n for n in names if n]

    def ensure_panel_cert(self, principal: Principal, *, force: bool = False) -> bool:
        """Issue the panel certificate if missing, due for renewal, or ``force``. True if issued."""
        if self.operator_managed:
            return False
        if not force and self.panel_cert_path.exists() and not self.status().renew_due:
            return False
        ca_key, ca_cert = self._ca()
        issued = x.issue_server_cert(ca_key, ca_cert, self.hostnames(), days=PANEL_DAYS)
        make_private_dir(self.tls_dir)
        write_secret_file(self.panel_key_path, x.key_to_pem(issued.key), mode=0o400, replace=True)
        write_secret_file(
            self.panel_cert_path, x.cert_to_pem(issued.cert), mode=0o644, replace=True
        )
        write_secret_file(self.ca_cert_path, x.cert_to_pem(ca_cert), mode=0o644, replace=True)
        with unit_of_work(self._services.db, principal) as uow:
            uow.record(
                Action.TLS_CERT_ISSUE,
                "tls:panel",
                {
                    "names": self.hostnames(),
                    "fingerprint": x.fingerprint(issued.cert),
                    "not_after": to_iso(issued.cert.not_valid_after_utc),
                },
            )
        return True

    def status(self) -> CertStatus:
        path = self.panel_cert_path
        if not path.exists():
            raise ConfigError(
                f"no panel certificate at {path}",
                hint="run `tundra tls renew`, or set tls_cert_file/tls_key_file",
            )
        cert = x.cert_from_pem(path.read_bytes())
        now = datetime.now(UTC)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        left = cert.not_valid_after_utc - now
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
