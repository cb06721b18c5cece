"""The agent's configuration file (TOML, default ``/etc/tundra/agent.toml``).

It holds who the agent is and where it dials, never a secret: the key and certificates live in
the state directory (:mod:`tundra.agent.state`). ``tundra agent enroll`` writes it; ``tundra
agent run`` and ``status`` read it. tomllib reads it; the writer below emits only TOML basic
strings with every character TOML requires escaped, so any value survives a round trip.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tundra.core.crypto.primitives import write_secret_file
from tundra.core.errors import ConfigError, InvalidFile

DEFAULT_CONFIG_PATH = Path("/etc/tundra/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/tundra-agent")
#: The variables the CLI reads when ``--config`` / ``--state-dir`` are not given.
CONFIG_VARIABLE = "TUNDRA_AGENT_CONFIG"

_AGENT_ID_RE = re.compile(r"[0-9a-f]{32}")
_FIELDS = ("agent_id", "server_name", "gateway", "panel_url", "state_dir")
#: Short escapes TOML defines; every other control character becomes \\uXXXX.
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    server_name: str
    #: host:port of the gateway (gRPC, mutual TLS 1.3).
    gateway: str
    #: The panel the agent enrolled with (https://host:port), kept for the operator's benefit.
    panel_url: str
    state_dir: Path

    def as_dict(self) -> dict[str, str]:
        return {
            "agent_id": self.agent_id,
            "server_name": self.server_name,
            "gateway": self.gateway,
            "panel_url": self.panel_url,
            "state_dir": str(self.state_dir),
        }


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError when it is neither."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536 or not host or any(c.isspace() for c in host):
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host, port


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (quotes included)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_config(config: AgentConfig) -> str:
    lines = [
        "# Tundra agent configuration, written by `tundra agent enroll`.",
        "# No secrets here: the key and certificates are in state_dir (mode 0700).",
        "",
    ]
    lines += [f"{key} = {toml_string(value)}" for key, value in config.as_dict().items()]
    return "\n".join(lines) + "\n"


def write_config(config: AgentConfig, path: Path) -> None:
    """Write the file atomically (mode 0644: it holds no secret), creating its directory."""
    validate(config.as_dict(), path)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_secret_file(path, render_config(config).encode("utf-8"), mode=0o644, replace=True)


def load_config(path: Path) -> AgentConfig:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no agent configuration at {path}",
            hint="enroll first: tundra agent enroll --url https://PANEL:8443, or pass --config",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the agent configuration {path}: {exc.strerror}",
            hint="run the agent as the user that enrolled it (root, or the unit's user)",
        ) from None
    try:
        values = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidFile(
            f"the agent configuration {path} is not valid TOML: {exc}",
            hint="fix the file, or enroll again to rewrite it",
        ) from None
    return validate(values, path)


def validate(values: dict[str, Any], path: Path) -> AgentConfig:
    """Every field present, a string, and well formed; unknown keys are refused (typos)."""

    def bad(problem: str) -> InvalidFile:
        return InvalidFile(
            f"the agent configuration {path} {problem}",
            hint="fix the file, or enroll again to rewrite it",
        )

    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise bad(f"has unknown keys: {', '.join(unknown)}")
    for field in _FIELDS:
        if field not in values:
            raise bad(f"lacks {field!r}")
        if not isinstance(values[field], str) or not values[field]:
            raise bad(f"has {field!r} that is not a non-empty string")
    if not _AGENT_ID_RE.fullmatch(values["agent_id"]):
        raise bad("has an agent_id that is not 32 lowercase hex digits")
    try:
        split_host_port(values["gateway"])
    except ValueError as exc:
        raise bad(f"has a bad gateway: {exc}") from None
    if not values["panel_url"].startswith("https://"):
        raise bad("has a panel_url that is not https://")
    state_dir = Path(values["state_dir"])
    if not state_dir.is_absolute():
        raise bad("has a state_dir that is not an absolute path")
    return AgentConfig(
        agent_id=values["agent_id"],
        server_name=values["server_name"],
        gateway=values["gateway"],
        panel_url=values["panel_url"],
        state_dir=state_dir,
    )
