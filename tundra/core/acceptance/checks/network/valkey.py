"""Valkey's own configuration: the facts and rules NX-03 applies.

NX-03 asks Valkey for its ``bind`` (loopback only), ``protected-mode yes``, and a password
(``requirepass`` or a default user that is not ``nopass``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tundra.core.acceptance.checks.network.addresses import is_loopback


def evaluate_valkey(facts: Mapping[str, Any]) -> list[str]:
    """Problems with Valkey's bind, protected-mode and authentication (facts from CONFIG/ACL)."""
    problems: list[str] = []
    port = str(facts.get("port", ""))
    bind = facts.get("bind")
    if bind is not None and port != "0":
        addresses = [a.lstrip("-") for a in str(bind).split()]
        if not addresses:
            problems.append("Valkey bind is empty: it listens on every interface")
        for address in addresses:
            if not is_loopback(address):
                problems.append(f"Valkey binds {address!r} (not loopback)")
    mode = facts.get("protected_mode")
    if mode is not None and str(mode).lower() != "yes":
        problems.append(f"Valkey protected-mode is {mode!r}, not 'yes'")
    default_user = facts.get("default_user")
    if default_user is not None:
        flags = str(default_user).split()
        if "on" in flags and "nopass" in flags:
            problems.append("Valkey's default user is enabled without a password (nopass)")
    elif facts.get("requirepass_set") is False:
        problems.append("Valkey has no requirepass and no ACL for the default user")
    return problems


def valkey_facts(url: str, *, timeout: float) -> dict[str, Any]:
    """Valkey's port, bind, protected-mode and default user, via the configured connection.

    The password itself is never kept: only whether one is set.
    """
    import redis

    facts: dict[str, Any] = {"errors": {}}
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        for name, key in (("port", "port"), ("bind", "bind"), ("protected-mode", "protected_mode")):
            try:
                value = client.config_get(name)
                facts[key] = _decoded(value.get(name)) if name in value else None
            except redis.RedisError as exc:
                facts["errors"][name] = str(exc)
        try:
            requirepass = client.config_get("requirepass")
            facts["requirepass_set"] = bool(requirepass.get("requirepass"))
        except redis.RedisError as exc:
            facts["errors"]["requirepass"] = str(exc)
        try:
            listed = client.execute_command("ACL", "LIST")  # type: ignore[no-untyped-call]
            users = [_decoded(u) for u in listed]
            default = next((u for u in users if u.startswith("user default ")), None)
            # The rule text carries a password hash (#...), never the password; keep only flags.
            facts["default_user"] = None if default is None else _acl_flags(default)
        except redis.RedisError as exc:
            facts["errors"]["acl"] = str(exc)
    finally:
        client.close()
    return facts


def _acl_flags(rule: str) -> str:
    return " ".join(t if not t.startswith(("#", ">")) else "<password hash>" for t in rule.split())


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
