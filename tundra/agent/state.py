"""The agent's state directory (default ``/var/lib/tundra-agent``, mode 0700).

Files: ``agent.key`` (the agent's ECDSA P-256 key, 0600), ``agent.crt`` (its client certificate),
``ca.pem`` (every CA the agent trusts for the gateway), ``command-keys.json`` (the control
plane's Ed25519 command keys) and ``nonces.db`` (the guard's replay cache, owned by
:mod:`tundra.agent.guard`).

A renewal replaces key and certificate together. Two renames cannot be one atomic step, so the
swap is journalled by its staging files: ``agent.crt.new`` is written first, ``agent.key.new``
second, then the key is renamed into place and the certificate last. Whatever the moment of a
crash, :meth:`AgentState.recover` either finishes the swap or drops the half-written stage, and
the pair on disk always matches.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra.agent.config import AgentConfig
from tundra.core.clock import to_iso
from tundra.core.crypto.primitives import (
    inspect_secret_file,
    install_file,
    make_private_dir,
    read_secret_file,
    write_secret_file,
)
from tundra.core.errors import ConfigError, InvalidFile
from tundra.core.pki import x509 as x

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
#: Renew when this share of the certificate's life has passed (SECURITY-SPEC: two thirds).
RENEW_AT = 2 / 3

_ENROLL_HINT = "enroll this host: tundra agent enroll --url https://PANEL:8443"


@dataclass(frozen=True)
class Credentials:
    """The agent's key and certificate (a matching pair) and the CA bundle it trusts."""

    key_pem: bytes
    cert_pem: bytes
    cert: x509.Certificate
    ca_bundle_pem: bytes

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def renew_at(self) -> datetime:
        return renewal_due(self.cert)


def renewal_due(cert: x509.Certificate) -> datetime:
    """The moment two thirds of ``cert``'s validity have passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


def public_key_der(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(data: bytes, *, source: Path | str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidFile(f"{source} is not a PEM private key", hint=_ENROLL_HINT) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidFile(f"{source} is not an ECDSA P-256 key", hint=_ENROLL_HINT)
    return key


def load_certificates(data: bytes, *, source: Path | str) -> list[x509.Certificate]:
    """Every certificate of a PEM file; InvalidFile when there is none or one is garbage."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise InvalidFile(f"{source} holds no PEM certificate", hint=_ENROLL_HINT)
    return certs


def encode_command_keys(keys: Mapping[str, bytes]) -> bytes:
    entries = [
        {"key_id": key_id, "public_key": base64.b64encode(raw).decode("ascii")}
        for key_id, raw in sorted(keys.items())
    ]
    return (json.dumps({"keys": entries}, indent=2) + "\n").encode("ascii")


def decode_command_keys(data: bytes, *, source: Path | str) -> dict[str, bytes]:
    def bad(problem: str) -> InvalidFile:
        return InvalidFile(f"{source} {problem}", hint="reconnect or enroll again to rewrite it")

    try:
        entries = json.loads(data)["keys"]
        keys = {str(e["key_id"]): base64.b64decode(e["public_key"], validate=True) for e in entries}
    except (ValueError, KeyError, TypeError):
        raise bad("is not a command-key file") from None
    if any(len(raw) != 32 for raw in keys.values()):
        raise bad("holds a public key that is not 32 bytes (Ed25519)")
    return keys


class AgentState:
    """``uid`` is the user the files must belong to: the daemon's own (the default). ``status``
    passes the directory's owner, so root can inspect a service user's state."""

    def __init__(self, state_dir: Path, *, uid: int | None = None) -> None:
        self.dir = state_dir
        self.uid = os.geteuid() if uid is None else uid

    # -- paths ---------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.dir / "agent.key"

    @property
    def cert_path(self) -> Path:
        return self.dir / "agent.crt"

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def command_keys_path(self) -> Path:
        return self.dir / "command-keys.json"

    @property
    def nonces_path(self) -> Path:
        return self.dir / "nonces.db"

    @property
    def _key_stage(self) -> Path:
        return self.dir / "agent.key.new"

    @property
    def _cert_stage(self) -> Path:
        return self.dir / "agent.crt.new"

    # -- writing -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory 0700 (tightening a looser one)."""
        try:
            make_private_dir(self.dir)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the agent state directory {self.dir}: {exc.strerror}",
                hint="run as root, or pass --state-dir to a directory you own",
            ) from None

    def store_credentials(self, *, key_pem: bytes, cert_pem: bytes) -> None:
        """Replace key and certificate as one step (see the module docstring)."""
        write_secret_file(self._cert_stage, cert_pem, mode=PUBLIC_MODE, replace=True)
        write_secret_file(self._key_stage, key_pem, mode=KEY_MODE, replace=True)
        install_file(self._key_stage, self.key_path)
        install_file(self._cert_stage, self.cert_path)

    def store_ca_bundle(self, pem: bytes) -> None:
        load_certificates(pem, source="the CA bundle")
        write_secret_file(self.ca_path, pem, mode=PUBLIC_MODE, replace=True)

    def store_command_keys(self, keys: Mapping[str, bytes]) -> None:
        write_secret_file(
            self.command_keys_path, encode_command_keys(keys), mode=PUBLIC_MODE, replace=True
        )

    def recover(self) -> bool:
        """Finish or drop an interrupted key+certificate swap; whether one was finished."""
        key_staged, cert_staged = self._key_stage.exists(), self._cert_stage.exists()
        if key_staged and cert_staged:
            install_file(self._key_stage, self.key_path)
            install_file(self._cert_stage, self.cert_path)
            return True
        if key_staged:  # the certificate stage is renamed last: this one is an orphan
            self._key_stage.unlink()
        if cert_staged:
            # The key was already renamed when the stage matches it; else the crash came
            # before the key stage was complete and the old pair is intact.
            try:
                key = load_private_key(self._read_key(), source=self.key_path)
                cert = load_certificates(self._cert_stage.read_bytes(), source="stage")[0]
                matches = public_key_der(key.public_key()) == public_key_der(cert)
            except (InvalidFile, ConfigError):
                matches = False
            if matches:
                install_file(self._cert_stage, self.cert_path)
                return True
            self._cert_stage.unlink()
        return False

    # -- reading -------------------------------------------------------------------------

    def _read_key(self) -> bytes:
        if not self.key_path.exists():
            raise ConfigError(f"the agent key {self.key_path} is missing", hint=_ENROLL_HINT)
        try:
            return read_secret_file(self.key_path, mode=KEY_MODE, uid=self.uid)
        except PermissionError as exc:
            raise ConfigError(
                f"the agent key is not safe to use: {exc}",
                hint="fix the mode/owner as shown, or enroll again",
            ) from None

    def _read_public(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"the agent {what} {path} is missing", hint=_ENROLL_HINT) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the agent {what} {path}: {exc.strerror}") from None

    def load_ca_bundle(self) -> bytes:
        pem = self._read_public(self.ca_path, "CA bundle")
        load_certificates(pem, source=self.ca_path)
        return pem

    def load_certificate(self) -> x509.Certificate:
        pem = self._read_public(self.cert_path, "certificate")
        return load_certificates(pem, source=self.cert_path)[0]

    def load_credentials(self) -> Credentials:
        """Key, certificate and CA bundle, checked: safe key file, matching pair, parseable."""
        self.check_dir()
        self.recover()
        key_pem = self._read_key()
        key = load_private_key(key_pem, source=self.key_path)
        cert_pem = self._read_public(self.cert_path, "certificate")
        cert = load_certificates(cert_pem, source=self.cert_path)[0]
        if public_key_der(key.public_key()) != public_key_der(cert):
            raise InvalidFile(
                f"{self.cert_path} does not belong to the key {self.key_path}",
                hint="restore both from the same backup, or enroll again",
            )
        return Credentials(key_pem, cert_pem, cert, self.load_ca_bundle())

    def load_command_keys(self) -> dict[str, bytes]:
        data = self._read_public(self.command_keys_path, "command keys")
        return decode_command_keys(data, source=self.command_keys_path)

    # -- checks --------------------------------------------------------------------------

    def dir_problems(self) -> list[str]:
        try:
            info = os.lstat(self.dir)
        except FileNotFoundError:
            return [f"{self.dir} does not exist ({_ENROLL_HINT})"]
        if not stat.S_ISDIR(info.st_mode):
            return [f"{self.dir} is not a directory"]
        problems = []
        mode = stat.S_IMODE(info.st_mode)
        if mode != DIR_MODE:
            problems.append(
                f"{self.dir} has mode {mode:04o}, not 0700 (fix: chmod 0700 {self.dir})"
            )
        if info.st_uid != self.uid:
            problems.append(
                f"{self.dir} is owned by uid {info.st_uid}, not uid {self.uid} "
                f"(fix: chown -R {self.uid} {self.dir})"
            )
        return problems

    def check_dir(self) -> None:
        problems = self.dir_problems()
        if problems:
            raise ConfigError(f"the agent state directory is not safe: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        """Everything wrong with the state directory, each with its fix (for ``status``)."""
        problems = self.dir_problems()
        if problems and not self.dir.is_dir():
            return problems
        if self._key_stage.exists() or self._cert_stage.exists():
            problems.append(
                "a certificate renewal was interrupted (`tundra agent run` finishes it)"
            )
        if self.key_path.exists():
            problems += [
                str(p) for p in inspect_secret_file(self.key_path, mode=KEY_MODE, uid=self.uid)
            ]
        else:
            problems.append(f"{self.key_path} is missing ({_ENROLL_HINT})")
        checks = [self.load_ca_bundle, self.load_command_keys, self.load_certificate]
        if not problems:
            checks.append(self.load_credentials)  # also: the key and certificate match
        for check in checks:
            try:
                check()
            except (ConfigError, InvalidFile) as exc:
                problems.append(str(exc))
        return problems


@dataclass(frozen=True)
class AgentStatus:
    """What ``tundra agent status`` shows: identity, certificate dates, trust, problems."""

    config_path: str
    agent_id: str
    server_name: str
    gateway: str
    panel_url: str
    state_dir: str
    cert_serial: str | None
    cert_not_before: str | None
    cert_not_after: str | None
    cert_days_left: float | None
    renew_at: str | None
    renewal_due: bool
    expired: bool
    ca_fingerprints: list[str]
    command_key_ids: list[str]
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def agent_status(
    config: AgentConfig, config_path: Path, *, now: datetime | None = None
) -> AgentStatus:
    """The local state of an enrolled agent; reads only, never repairs."""
    moment = now or datetime.now(UTC)
    try:
        owner: int | None = config.state_dir.stat().st_uid
    except OSError:
        owner = None
    state = AgentState(config.state_dir, uid=owner)
    problems = state.problems()
    cert = None
    with contextlib.suppress(ConfigError, InvalidFile):
        cert = state.load_certificate()
    if cert is not None:
        due = renewal_due(cert)
        days_left = round((cert.not_valid_after_utc - moment).total_seconds() / 86400, 3)
        expired = moment >= cert.not_valid_after_utc
        if expired:
            problems.append(
                "the certificate has expired: enroll again (tundra server token NAME on the "
                "control plane, then tundra agent enroll)"
            )
    cas: list[str] = []
    with contextlib.suppress(ConfigError, InvalidFile, OSError):
        cas = [
            x.fingerprint(c)
            for c in load_certificates(state.ca_path.read_bytes(), source=state.ca_path)
        ]
    key_ids: list[str] = []
    with contextlib.suppress(ConfigError, InvalidFile):
        key_ids = sorted(state.load_command_keys())
    return AgentStatus(
        config_path=str(config_path),
        agent_id=config.agent_id,
        server_name=config.server_name,
        gateway=config.gateway,
        panel_url=config.panel_url,
        state_dir=str(config.state_dir),
        cert_serial=None if cert is None else format(cert.serial_number, "x"),
        cert_not_before=None if cert is None else to_iso(cert.not_valid_before_utc),
        cert_not_after=None if cert is None else to_iso(cert.not_valid_after_utc),
        cert_days_left=None if cert is None else days_left,
        renew_at=None if cert is None else to_iso(due),
        renewal_due=cert is not None and moment >= due,
        expired=cert is not None and expired,
        ca_fingerprints=cas,
        command_key_ids=key_ids,
        problems=problems,
    )
