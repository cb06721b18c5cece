"""Every Tundra setting, declared once.

A setting has a name, a type, a default, a help text and a ``TUNDRA_*`` environment variable.
Values come from (lowest to highest precedence) the defaults, ``/etc/tundra/tundra.toml``,
``$TUNDRA_HOME/tundra.toml`` and the environment. ``docs/settings.md`` documents each one and a
test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tundra.core.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/tundra/tundra.toml")


def _default_home() -> str:
    if os.geteuid() == 0 and Path("/var/lib/tundra").is_dir():
        return "/var/lib/tundra"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data) / "tundra")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "TUNDRA_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "home",
        str,
        None,
        "Directory holding master.key, tundra.db, kv.db and the TLS material. Default: "
        "/var/lib/tundra for root when it exists, else $XDG_DATA_HOME/tundra.",
    ),
    Setting(
        "database_url",
        str,
        "",
        "postgresql://… to use PostgreSQL; empty for the embedded SQLite database "
        "$TUNDRA_HOME/tundra.db.",
    ),
    Setting(
        "valkey_url",
        str,
        "",
        "redis://… to use Valkey/Redis for sessions, rate limits, nonces and locks; empty for "
        "the embedded store $TUNDRA_HOME/kv.db.",
    ),
    Setting(
        "token_env",
        str,
        "live",
        "The env part of API tokens this deployment issues and accepts (tnd_{env}_…), "
        "[a-z0-9]{1,16}.",
    ),
    Setting(
        "password_profile",
        str,
        "production",
        "Argon2id parameters: 'production' (64 MiB, t=3, p=1; the only one for real use) or "
        "'test' (cheap, for test suites only).",
    ),
    Setting(
        "hash_concurrency",
        int,
        4,
        "Most password hashes computed at once; each production hash takes 64 MiB.",
    ),
    Setting(
        "reauth_window",
        int,
        300,
        "Seconds after an authentication during which sensitive operations need no new one.",
    ),
    Setting("totp_issuer", str, "Tundra", "Issuer name shown in authenticator apps."),
    Setting(
        "require_admin_totp", _bool, True, "Admins must enrol TOTP before they get a panel session."
    ),
    Setting(
        "cli_user",
        str,
        "",
        "The Tundra user the local operator authenticates as with `tundra login`; empty means "
        "the user named like the Unix user, or the only admin.",
    ),
    Setting(
        "login_max_failures",
        int,
        5,
        "Failed logins per account or source address before the window locks.",
    ),
    Setting("login_lock_seconds", int, 900, "How long the failed-login window lasts."),
    Setting(
        "token_last_used_interval",
        int,
        60,
        "Seconds between writes of an API token's last_used_at (reads stay cheap).",
    ),
    Setting(
        "rotation_batch_size", int, 200, "Rows re-encrypted per transaction in key rotate --data."
    ),
    Setting(
        "panel_listen",
        str,
        "127.0.0.1:8443",
        "HOST:PORT of the HTTPS panel and API (443 in production). [::1]:8443 for IPv6.",
    ),
    Setting(
        "redirect_listen",
        str,
        "127.0.0.1:8080",
        "HOST:PORT of the plain-HTTP listener that only redirects to HTTPS; empty disables it.",
    ),
    Setting(
        "public_https_port",
        int,
        8443,
        "The HTTPS port browsers reach (used in redirects; 443 behind a port mapping).",
    ),
    Setting(
        "panel_hostnames",
        str,
        "localhost,127.0.0.1,::1",
        "Comma-separated names and addresses the internal panel certificate is issued for.",
    ),
    Setting(
        "tls_cert_file",
        str,
        "",
        "The operator's certificate chain (PEM) for the panel; empty uses the internal CA.",
    ),
    Setting(
        "tls_key_file",
        str,
        "",
        "The operator's private key (PEM, mode 0400) matching tls_cert_file.",
    ),
    Setting(
        "gateway_listen",
        str,
        "0.0.0.0:7447",
        "HOST:PORT of the agent gateway (gRPC, mutual TLS 1.3) started by `tundra serve`; empty "
        "disables it.",
    ),
    Setting(
        "gateway_address",
        str,
        "",
        "HOST:PORT agents dial, written into their configuration at enrollment; empty means the "
        "first of panel_hostnames with the port of gateway_listen. The gateway's certificate is "
        "issued for panel_hostnames.",
    ),
    Setting(
        "agent_trusted_cidrs",
        str,
        "",
        "Comma-separated networks (CIDR) agents may connect from besides their server's "
        "registered address.",
    ),
    Setting(
        "agent_cert_hours",
        int,
        24,
        "Lifetime of agent client certificates; agents renew at two thirds of it.",
    ),
    Setting(
        "agent_heartbeat_seconds",
        int,
        15,
        "Seconds between agent heartbeats; an agent unheard for three is shown disconnected.",
    ),
    Setting(
        "command_ttl_seconds",
        int,
        30,
        "Seconds a signed command stays valid after it is issued (at most 60).",
    ),
    Setting(
        "ca_overlap_hours",
        int,
        72,
        "Hours a rotated-out CA stays trusted next to the new one (`tundra ca rotate`).",
    ),
    Setting(
        "gateway_poll_ms",
        int,
        100,
        "Milliseconds between the gateway's looks at the command queue and the revoked list.",
    ),
    Setting("session_idle_timeout", int, 1800, "Seconds of inactivity that end a panel session."),
    Setting(
        "session_absolute_timeout",
        int,
        43200,
        "Seconds after login that end a panel session whatever its activity.",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :func:`load_settings`; tests may construct directly."""

    home: Path
    database_url: str = ""
    valkey_url: str = ""
    token_env: str = "live"
    password_profile: str = "production"
    hash_concurrency: int = 4
    reauth_window: int = 300
    totp_issuer: str = "Tundra"
    require_admin_totp: bool = True
    cli_user: str = ""
    login_max_failures: int = 5
    login_lock_seconds: int = 900
    token_last_used_interval: int = 60
    rotation_batch_size: int = 200
    panel_listen: str = "127.0.0.1:8443"
    redirect_listen: str = "127.0.0.1:8080"
    public_https_port: int = 8443
    panel_hostnames: str = "localhost,127.0.0.1,::1"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    gateway_listen: str = "0.0.0.0:7447"
    gateway_address: str = ""
    agent_trusted_cidrs: str = ""
    agent_cert_hours: int = 24
    agent_heartbeat_seconds: int = 15
    command_ttl_seconds: int = 30
    ca_overlap_hours: int = 72
    gateway_poll_ms: int = 100
    session_idle_timeout: int = 1800
    session_absolute_timeout: int = 43200
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"

    @property
    def sqlite_path(self) -> Path:
        return self.home / "tundra.db"

    @property
    def kv_path(self) -> Path:
        return self.home / "kv.db"

    @property
    def checkpoint_key_path(self) -> Path:
        return self.home / "audit-checkpoint.key"

    @property
    def checkpoint_vkey_path(self) -> Path:
        return self.home / "audit-checkpoint.vkey"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def database_label(self) -> str:
        """Where the database is, with any password removed."""
        if not self.database_url:
            return f"sqlite:{self.sqlite_path}"
        from tundra.core.storage.db import redact_url

        return redact_url(self.database_url)


def _validate(values: dict[str, Any]) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]{1,16}", values["token_env"]):
        raise ConfigError(f"token_env {values['token_env']!r} must match [a-z0-9]{{1,16}}")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError("tls_cert_file and tls_key_file go together: set both or neither")
    if values["password_profile"] not in {"production", "test"}:
        raise ConfigError("password_profile must be 'production' or 'test'")
    for name in (
        "hash_concurrency",
        "reauth_window",
        "login_max_failures",
        "login_lock_seconds",
        "rotation_batch_size",
        "session_idle_timeout",
        "session_absolute_timeout",
        "public_https_port",
        "agent_cert_hours",
        "agent_heartbeat_seconds",
        "command_ttl_seconds",
        "ca_overlap_hours",
        "gateway_poll_ms",
    ):
        if values[name] < 1:
            raise ConfigError(f"{name} must be at least 1")
    if values["command_ttl_seconds"] > 60:
        raise ConfigError("command_ttl_seconds must be at most 60 (SECURITY-SPEC: commands expire)")
    for cidr in filter(None, (c.strip() for c in values["agent_trusted_cidrs"].split(","))):
        import ipaddress

        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"agent_trusted_cidrs: {cidr!r} is not a network: {exc}") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    import tomllib

    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)} in {path}", hint="see docs/settings.md"
        )
    return data


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Resolve every setting from defaults, config files, the environment and ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    sources: dict[str, str] = {s.name: "default" for s in SETTINGS}

    def apply(name: str, raw: Any, source: str) -> None:
        setting = _BY_NAME[name]
        try:
            values[name] = setting.type(raw) if isinstance(raw, str) else raw
            if setting.type is int and not isinstance(values[name], int):
                raise ValueError("expected an integer")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {name} from {source}: {exc}") from exc
        sources[name] = source

    for name, raw in _read_toml(SYSTEM_CONFIG).items():
        apply(name, raw, str(SYSTEM_CONFIG))
    home_raw = overrides.get("home") or env.get("TUNDRA_HOME") or values["home"] or _default_home()
    home = Path(home_raw).expanduser()
    home_toml = home / "tundra.toml"
    for name, raw in _read_toml(home_toml).items():
        apply(name, raw, str(home_toml))
    for setting in SETTINGS:
        if setting.env in env:
            apply(setting.name, env[setting.env], setting.env)
    for name, raw in overrides.items():
        if raw is not None:
            apply(name, raw, "override")
    values["home"] = Path(str(overrides.get("home") or env.get("TUNDRA_HOME") or home)).expanduser()
    _validate(values)
    known = {f.name for f in fields(Settings)} - {"sources"}
    return Settings(**{k: v for k, v in values.items() if k in known}, sources=sources)
