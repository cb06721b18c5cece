"""Constants and helpers shared by the identity tests (imported as ``idhelpers``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tundra.core.services import Services

#: For tests of input validation and other logic that does not depend on the database engine:
#: run them on SQLite only (overrides the ``database_url`` fixture) to keep the suite fast.
SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])

ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"
BOB = "bob"
BOB_PASSWORD = "bob's long passphrase"


def audit_rows(services: Services, action: str) -> list[dict[str, Any]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", {"a": action})
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


def all_audit_text(services: Services) -> str:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT actor, action, resource, details FROM audit_log")
    return json.dumps(rows)
