"""The server inventory: validation, permissions, re-authentication and same-transaction audit."""

from __future__ import annotations

import pytest

from tundra.core.audit.actions import Action
from tundra.core.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ReauthRequired,
)
from tundra.core.principal import Principal, PrincipalKind, cli_principal


def audit_rows(services, action: str) -> list[dict]:
    with services.db.read() as tx:
        return tx.fetchall("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", {"a": action})


def test_add_list_show_update(services) -> None:
    me = cli_principal()
    added = services.servers.add(
        me, name="web-1", address="203.0.113.10", tags=["prod", "eu"], request_id="req-add-1"
    )
    assert added.status == "pending"
    assert [s.name for s in services.servers.list(me)] == ["web-1"]
    assert services.servers.get(me, "web-1").tags == ("eu", "prod")
    updated = services.servers.update(me, "web-1", address="2001:db8::1", tags=["prod"])
    assert updated.address == "2001:db8::1" and updated.tags == ("prod",)
    created = audit_rows(services, Action.SERVER_CREATE)
    assert len(created) == 1
    assert created[0]["request_id"] == "req-add-1"
    assert created[0]["actor"] == me.actor
    assert created[0]["resource"] == "server:web-1"
    assert len(audit_rows(services, Action.SERVER_UPDATE)) == 1


def test_update_without_change_writes_nothing(services) -> None:
    me = cli_principal()
    services.servers.add(me, name="web-1", address="203.0.113.10")
    services.servers.update(me, "web-1", address="203.0.113.10")
    assert audit_rows(services, Action.SERVER_UPDATE) == []


def test_list_filters_by_tag(services) -> None:
    me = cli_principal()
    services.servers.add(me, name="a", address="203.0.113.1", tags=["prod"])
    services.servers.add(me, name="b", address="203.0.113.2", tags=["dev"])
    assert [s.name for s in services.servers.list(me, tag="dev")] == ["b"]


@pytest.mark.parametrize("name", ["Web", "-web", "web_1", "", "a" * 64, "web 1", "wéb"])
def test_bad_names_are_refused(services, name: str) -> None:
    with pytest.raises(InvalidInput, match="server name"):
        services.servers.add(cli_principal(), name=name, address="203.0.113.1")


@pytest.mark.parametrize("address", ["", "999.1.1.1", "http://x", "a..b", "x" * 300, "1.2.3"])
def test_bad_addresses_are_refused(services, address: str) -> None:
    with pytest.raises(InvalidInput, match="address"):
        services.servers.add(cli_principal(), name="web-1", address=address)


def test_duplicate_name_is_a_conflict_and_writes_no_audit_row(services) -> None:
    me = cli_principal()
    services.servers.add(me, name="web-1", address="203.0.113.10")
    with pytest.raises(AlreadyExists):
        services.servers.add(me, name="web-1", address="203.0.113.11")
    assert len(audit_rows(services, Action.SERVER_CREATE)) == 1


def test_unknown_server_is_not_found(services) -> None:
    with pytest.raises(NotFound, match="web-9"):
        services.servers.get(cli_principal(), "web-9")


def test_remove_is_sensitive(services) -> None:
    me = cli_principal()
    services.servers.add(me, name="web-1", address="203.0.113.10")
    with pytest.raises(ReauthRequired):
        services.servers.remove(me, "web-1")
    assert services.servers.get(me, "web-1")
    services.reauth.cli_login(me, username="admin", password="correct horse battery staple")
    services.servers.remove(me, "web-1")
    assert services.servers.list(me) == []
    assert len(audit_rows(services, Action.SERVER_DELETE)) == 1


def _token(scopes: set[str], servers: tuple[str, ...] = ()) -> Principal:
    resources = {"server": servers} if servers else {}
    return Principal(
        PrincipalKind.TOKEN,
        "tnd_live_abcd",
        user_id=None,
        scopes=frozenset(scopes),
        resources=resources,
        token_id="t1",
    )


def test_token_scopes_and_resource_restrictions(services) -> None:
    me = cli_principal()
    services.servers.add(me, name="web-1", address="203.0.113.10")
    services.servers.add(me, name="web-2", address="203.0.113.11")
    reader = _token({"servers:read"}, servers=("web-1",))
    assert [s.name for s in services.servers.list(reader)] == ["web-1"]
    with pytest.raises(PermissionDenied):
        services.servers.get(reader, "web-2")
    with pytest.raises(PermissionDenied):
        services.servers.add(reader, name="web-3", address="203.0.113.12")
    writer = _token({"servers:write", "servers:read"})
    with pytest.raises(ReauthRequired):
        services.servers.remove(writer, "web-1")
    assert len(audit_rows(services, Action.TOKEN_DENIED)) >= 2


def test_the_change_and_its_audit_row_commit_or_fail_together(services) -> None:
    with services.db.transaction() as tx:
        tx.execute("ALTER TABLE audit_log RENAME TO audit_log_moved")
    with pytest.raises(Exception, match="audit_log"):
        services.servers.add(cli_principal(), name="web-1", address="203.0.113.10")
    with services.db.transaction() as tx:
        tx.execute("ALTER TABLE audit_log_moved RENAME TO audit_log")
    assert services.servers.list(cli_principal()) == []
