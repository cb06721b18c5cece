"""PostgreSQL's own configuration: the facts and rules NX-03 applies (ST-04 shares the facts).

NX-03 asks PostgreSQL for ``listen_addresses`` (loopback or empty only) and its pg_hba rules
(``pg_hba_file_rules`` when the database user may read it, else the ``pg_hba.conf`` file when
local and readable; ``trust`` on any ``host*`` line fails).
"""

from __future__ import annotations

import glob
import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.network.addresses import is_loopback

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext


@dataclass(frozen=True, slots=True)
class HbaRule:
    """One pg_hba rule (from ``pg_hba_file_rules`` or parsed from the file)."""

    line: int
    type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    address: str | None
    method: str
    netmask: str | None = None
    error: str | None = None

    def evidence(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "type": self.type,
            "database": list(self.databases),
            "user": list(self.users),
            "address": self.address,
            "netmask": self.netmask,
            "method": self.method,
            "error": self.error,
        }


_HBA_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,"]+)|(,)')
_HOST_TYPES: Final = frozenset({"host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"})


def _hba_fields(line: str) -> list[list[str]]:
    """Whitespace-separated fields, each a comma-separated list of (possibly quoted) tokens."""
    fields: list[list[str]] = []
    position = 0
    joining = False
    for match in _HBA_TOKEN.finditer(line):
        gap = line[position : match.start()]
        position = match.end()
        if match.group(3):
            joining = True
            continue
        token = match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2)
        if fields and (joining or (not gap and match.group(1) is not None)):
            fields[-1].append(token)
        else:
            fields.append([token])
        joining = False
    return fields


def parse_pg_hba(text: str) -> list[HbaRule]:
    """The rules of a ``pg_hba.conf`` text (comments, quotes, lists, continuation lines).

    ``include*`` directives are kept as rules of type ``include`` so that the evaluation can say
    it did not follow them.
    """
    rules: list[HbaRule] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        fields = _hba_fields(line)
        if not fields:
            continue
        kind = fields[0][0].lower()
        if kind.startswith("include"):
            target = " ".join(t for f in fields[1:] for t in f)
            rules.append(HbaRule(start, "include", (), (), target, kind))
            continue
        if kind == "local" and len(fields) >= 4:
            rules.append(
                HbaRule(start, kind, tuple(fields[1]), tuple(fields[2]), None, fields[3][0])
            )
        elif kind in _HOST_TYPES and len(fields) >= 5:
            address, rest = fields[3][0], fields[4:]
            netmask = None
            if "/" not in address and _looks_like_ip(address) and len(rest) >= 2:
                netmask, rest = rest[0][0], rest[1:]
            rules.append(
                HbaRule(
                    start, kind, tuple(fields[1]), tuple(fields[2]), address, rest[0][0], netmask
                )
            )
        else:
            rules.append(HbaRule(start, kind, (), (), None, "", error="cannot parse this line"))
    return rules


def _strip_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def evaluate_postgres(listen_addresses: str | None, rules: Sequence[HbaRule] | None) -> list[str]:
    """Problems with PostgreSQL's listen_addresses and pg_hba rules (None: not known)."""
    problems: list[str] = []
    if listen_addresses is not None:
        for entry in (e.strip() for e in listen_addresses.split(",")):
            if entry and not is_loopback(entry):
                problems.append(f"PostgreSQL listen_addresses includes {entry!r} (not loopback)")
    for rule in rules or ():
        if rule.type in _HOST_TYPES and rule.method.lower() == "trust":
            where = rule.address or "?"
            problems.append(
                f"pg_hba line {rule.line}: {rule.type} {','.join(rule.databases)} "
                f"{','.join(rule.users)} {where} uses trust (no authentication)"
            )
    return problems


@dataclass
class PostgresFacts:
    """What PostgreSQL says about itself through the configured connection."""

    listen_addresses: str | None = None
    rules: list[HbaRule] | None = None
    rules_source: str | None = None
    data_directory: str | None = None
    hba_file: str | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return {
            "listen_addresses": self.listen_addresses,
            "hba_rules": None if self.rules is None else [r.evidence() for r in self.rules],
            "hba_source": self.rules_source,
            "data_directory": self.data_directory,
            "hba_file": self.hba_file,
            "errors": dict(self.errors),
        }


def postgres_facts(url: str, *, timeout: float, local: bool) -> PostgresFacts:
    """Ask PostgreSQL (as the configured user) for its listen addresses, hba rules, data dir.

    Each question stands alone: a user without the privilege for one still answers the others.
    Without ``pg_hba_file_rules``, a local runner reads the hba file (from ``SHOW hba_file``, or
    the Debian cluster whose port matches) when it may.
    """
    import psycopg

    facts = PostgresFacts()
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True)
    except psycopg.Error as exc:
        facts.errors["connect"] = _first_line(exc)
        return facts
    with conn:
        for name in ("listen_addresses", "data_directory", "hba_file"):
            try:
                row = conn.execute(f"SHOW {name}").fetchone()
                setattr(facts, name, None if row is None else str(row[0]))
            except psycopg.Error as exc:
                facts.errors[name] = _first_line(exc)
        try:
            rows = conn.execute(
                "SELECT line_number, type, database, user_name, address, netmask, auth_method,"
                " error FROM pg_hba_file_rules ORDER BY line_number"
            ).fetchall()
            facts.rules = [
                HbaRule(
                    int(r[0] or 0),
                    str(r[1] or ""),
                    tuple(r[2] or ()),
                    tuple(r[3] or ()),
                    r[4],
                    str(r[6] or ""),
                    r[5],
                    r[7],
                )
                for r in rows
            ]
            facts.rules_source = "pg_hba_file_rules"
        except psycopg.Error as exc:
            facts.errors["pg_hba_file_rules"] = _first_line(exc)
    if facts.rules is None and local:
        port = urllib.parse.urlsplit(url).port or 5432
        for path in _hba_candidates(facts.hba_file, port):
            try:
                facts.rules = parse_pg_hba(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                facts.errors[f"read {path}"] = str(exc)
                continue
            facts.rules_source = path
            break
    return facts


def _hba_candidates(hba_file: str | None, port: int) -> list[str]:
    if hba_file:
        return [hba_file]
    found = []
    for conf in sorted(glob.glob("/etc/postgresql/*/*/postgresql.conf")):
        try:
            text = Path(conf).read_text(encoding="utf-8")
        except OSError:
            continue
        match = re.search(r"^\s*port\s*=\s*(\d+)", text, re.MULTILINE)
        if int(match.group(1) if match else 5432) == port:
            found.append(str(Path(conf).with_name("pg_hba.conf")))
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pg_facts_for(ctx: RunContext) -> PostgresFacts | None:
    """PostgreSQL's facts for this run (shared by NX-03 and ST-04), None without PostgreSQL."""
    url = ctx.services.settings.database_url
    if not url.startswith(("postgresql:", "postgres:")):
        return None
    timeout = ctx.io_timeout()
    return ctx.memo(
        "network:postgres-facts", lambda: postgres_facts(url, timeout=timeout, local=ctx.local)
    )
