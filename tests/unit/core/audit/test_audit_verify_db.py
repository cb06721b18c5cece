"""The database verifier's fast path vouches for clean batches and hands odd ones to the exact walk.

White-box on purpose: if the fast encoding ever drifted from the canonical one, every batch would
quietly take the slow exact path and verification would still pass, only slowly. These tests
make that drift visible.
"""

from __future__ import annotations

import pytest
from audithelpers import recompute_from, write_rows

from tundra.core.audit import verify_db
from tundra.core.principal import cli_principal
from tundra.core.uow import unit_of_work


@pytest.fixture
def fast_results(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    seen: list[bool] = []
    real = verify_db._check_batch

    def spy(batch, walker):
        seen.append(real(batch, walker))
        return seen[-1]

    monkeypatch.setattr(verify_db, "_check_batch", spy)
    return seen


def test_clean_rows_take_the_fast_path(audit_services, fast_results, monkeypatch) -> None:
    monkeypatch.setattr(verify_db, "BATCH", 7)  # several batches, the last one short
    write_rows(audit_services, 21)
    with unit_of_work(audit_services.db, cli_principal()) as uow:
        uow.record("fleet:server:create", 'server:"quoted" \\ é \u2028 \n\t\x01\x1f',
                   {"note": "ünïcode \x00 \"q\"", "n": [1, 2.5, None, True]})
    result = audit_services.audit.verify()
    assert result.ok
    assert result.rows_checked == 22
    assert fast_results == [True, True, True, True]  # 7 + 7 + 7 + 1 rows


def test_a_tampered_batch_falls_back_and_is_classified(audit_services, fast_results,
                                                       monkeypatch) -> None:
    monkeypatch.setattr(verify_db, "BATCH", 5)
    write_rows(audit_services, 12)
    with audit_services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 8")
    result = audit_services.audit.verify()
    assert (result.first_bad_seq, str(result.reason)) == (8, "modified")
    assert fast_results == [True, False]
    assert result.rows_checked == 7


def test_a_checkpoint_inside_a_fast_batch_is_compared(audit_services, fast_results,
                                                      monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(verify_db, "BATCH", 10)
    write_rows(audit_services, 4)
    note = audit_services.audit.checkpoint(out=tmp_path / "4.note")
    write_rows(audit_services, 8, start=4)
    assert audit_services.audit.verify(checkpoint=note).ok
    with audit_services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 2")
    recompute_from(audit_services, 2)  # consistent again, but not the chain that was signed
    fast_results.clear()
    result = audit_services.audit.verify(checkpoint=note)
    assert (result.first_bad_seq, str(result.reason)) == (4, "rewritten")
    assert fast_results == [True]
