"""The unit of work: the only way core code changes state.

A unit of work is one write transaction that knows who is acting and for which request. Every
statement that changes a row goes through :meth:`UnitOfWork.execute`; before commit the unit
appends its audit events to the chain *in the same transaction*. A unit that changed state but
recorded no event refuses to commit (:class:`~tundra.core.errors.AuditMissing`), so forgetting
the audit row is impossible by construction, not by review.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tundra.core.errors import AuditMissing
from tundra.core.principal import Principal
from tundra.core.storage.db import Database, Params, Row, Transaction

if TYPE_CHECKING:
    from tundra.core.audit.chain import AuditEvent, AuditRow

# The chain (hashing, redaction) is imported when a unit first records an event, so read-only
# commands that merely import a service never load it.


def new_request_id() -> str:
    return os.urandom(12).hex()


class UnitOfWork:
    def __init__(self, tx: Transaction, principal: Principal, request_id: str) -> None:
        self._tx = tx
        self.principal = principal
        self.request_id = request_id
        self.events: list[AuditEvent] = []
        self.changed = False
        self.written: list[AuditRow] = []

    @property
    def dialect(self) -> str:
        return self._tx.dialect

    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run a state-changing statement; the unit now owes an audit event."""
        self.changed = True
        return self._tx.execute(sql, params)

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._tx.fetchall(sql, params)

    def fetchone(self, sql: str, params: Params | None = None) -> Row | None:
        return self._tx.fetchone(sql, params)

    def fetchval(self, sql: str, params: Params | None = None) -> Any:
        return self._tx.fetchval(sql, params)

    def record(self, action: str, resource: str, details: Mapping[str, Any] | None = None) -> None:
        """Record an audit event; written at commit, in this transaction."""
        from tundra.core.audit.chain import AuditEvent

        self.events.append(AuditEvent(action, resource, dict(details or {})))


@contextmanager
def unit_of_work(
    db: Database, principal: Principal, *, request_id: str | None = None
) -> Iterator[UnitOfWork]:
    """Open a unit of work; commit with its audit rows, or roll everything back."""
    with db.transaction() as tx:
        uow = UnitOfWork(tx, principal, request_id or new_request_id())
        yield uow
        if uow.changed and not uow.events:
            raise AuditMissing("a state change was about to commit without an audit event")
        if uow.events:
            from tundra.core.audit.chain import append

            uow.written = append(
                tx, actor=principal.actor, request_id=uow.request_id, events=uow.events
            )


def record_only(
    db: Database,
    principal: Principal,
    action: str,
    resource: str,
    details: Mapping[str, Any] | None = None,
    *,
    request_id: str | None = None,
) -> None:
    """Write an audit row that accompanies no other change (a refusal, a failed login)."""
    with unit_of_work(db, principal, request_id=request_id) as uow:
        uow.record(action, resource, details)
