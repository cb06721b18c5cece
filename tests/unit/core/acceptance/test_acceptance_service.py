"""AcceptanceService: background runs for the panel and the API, admin only, audited."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tundra.core.acceptance import registry as registry_module
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Section, Severity, failed, passed
from tundra.core.acceptance.registry import Registry
from tundra.core.acceptance.service import (
    AcceptanceService,
    local_defaults,
)
from tundra.core.audit.actions import Action
from tundra.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tundra.core.principal import Principal
from tundra.core.services import Services

release = threading.Event()


def gated(ctx: RunContext) -> Outcome:
    release.wait(10)
    return passed("released")


def local_only(ctx: RunContext) -> Outcome:
    return passed("home seen", home=str(ctx.services.settings.home))


@pytest.fixture
def fake() -> Iterator[Registry]:
    reg = Registry(strict_catalogue=False)
    reg.check("TR-01", "gated", section=Section.TRANSPORT, severity=Severity.HIGH)(gated)
    reg.check("HD-01", "fails", section=Section.HEADERS, severity=Severity.HIGH)(
        lambda ctx: failed("no csp")
    )
    reg.check("ST-04", "local", section=Section.STORAGE, severity=Severity.LOW, needs=["services"])(
        local_only
    )
    release.clear()
    with registry_module.use(reg):
        yield reg
    release.set()


def admin(services: Services) -> Principal:
    return services.users.get("admin").as_principal()


def actions(services: Services) -> list[tuple[str, str, str]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT action, resource, request_id FROM audit_log ORDER BY seq")
    return [(r["action"], r["resource"], r["request_id"]) for r in rows]


def test_a_run_in_the_background_with_progress_and_audit(
    services: Services, fake: Registry
) -> None:
    svc = AcceptanceService(services)
    state = svc.start(
        admin(services), RunOptions(url="https://localhost:8443", local=True),
        request_id="req-acceptance-1",
    )  # fmt: skip
    assert state.status == "running"
    with pytest.raises(Conflict, match="running already"):
        svc.start(admin(services), RunOptions(url="https://localhost:8443"))
    release.set()
    assert svc.wait(state.id, timeout=20)
    done = svc.get(admin(services), state.id)
    assert done.status == "finished"
    assert done.exit_code == 1
    assert done.total == done.done == 3
    assert done.report is not None
    statuses = {c["id"]: c["status"] for c in done.report["checks"]}
    assert statuses == {"TR-01": "pass", "HD-01": "fail", "ST-04": "pass"}
    assert {r["id"] for r in done.results} == {"TR-01", "HD-01", "ST-04"}
    resource = f"acceptance-run:{state.id}"
    logged = [a for a in actions(services) if a[1] == resource]
    assert logged == [
        (Action.ACCEPTANCE_RUN_START, resource, "req-acceptance-1"),
        (Action.ACCEPTANCE_RUN_FINISH, resource, "req-acceptance-1"),
    ]
    # The lock is gone: another run may start.
    second = svc.start(admin(services), RunOptions(url="https://localhost:8443", checks=("HD-01",)))
    assert svc.wait(second.id, timeout=20)
    assert svc.get(admin(services), second.id).exit_code == 1


def test_progress_is_visible_while_running(services: Services, fake: Registry) -> None:
    svc = AcceptanceService(services)
    state = svc.start(admin(services), RunOptions(url="https://localhost:8443"))
    try:
        for _ in range(200):
            seen = svc.get(admin(services), state.id)
            if seen.done >= 2:  # HD-01 finished, ST-04 skipped (not local)
                break
            threading.Event().wait(0.02)
        assert seen.status == "running"
        assert seen.running == ("TR-01",)
        assert {r["id"] for r in seen.results} == {"HD-01", "ST-04"}
    finally:
        release.set()
        svc.wait(state.id, timeout=20)


def test_only_admins(services: Services, fake: Registry) -> None:
    services.users.add(admin(services), name="bob", password="a long enough password")
    bob = services.users.get("bob").as_principal()
    svc = AcceptanceService(services)
    with pytest.raises(PermissionDenied):
        svc.start(bob, RunOptions(url="https://localhost:8443"))
    release.set()
    state = svc.start(admin(services), RunOptions(url="https://localhost:8443"))
    svc.wait(state.id, timeout=20)
    with pytest.raises(PermissionDenied):
        svc.get(bob, state.id)
    with pytest.raises(NotFound):
        svc.get(admin(services), "no-such-run")


def test_a_crashing_run_is_recorded(services: Services, fake: Registry) -> None:
    svc = AcceptanceService(services)
    release.set()
    # workers=0 passes the service's checks but the runner refuses it: the run crashes.
    state = svc.start(admin(services), RunOptions(url="https://localhost:8443", workers=0))
    assert svc.wait(state.id, timeout=20)
    crashed = svc.get(admin(services), state.id)
    assert crashed.status == "crashed"
    assert crashed.error is not None and "workers" in crashed.error
    assert actions(services)[-1][0] == Action.ACCEPTANCE_RUN_FINISH


def test_local_defaults(services: Services) -> None:
    defaults = local_defaults(services)
    assert defaults["url"] == "https://localhost:8443"
    assert defaults["http_port"] == 8080
    assert defaults["ca_file"] == services.pki.ca_cert_path


def test_a_run_started_through_core_may_only_target_this_panel(services: Services) -> None:
    svc = AcceptanceService(services)
    for url in ("https://panel.test", "https://127.0.0.1:22", "https://169.254.169.254"):
        with pytest.raises(InvalidInput, match="is not this panel"):
            svc.start(admin(services), RunOptions(url=url))
    # Refused before anything started or was audited.
    assert not [a for a in actions(services) if a[0].startswith("acceptance:")]
