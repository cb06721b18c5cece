"""Scopes: who may do what, and the audited 403 for a token out of scope or resource."""

from __future__ import annotations

import pytest
from idhelpers import ADMIN, SQLITE_ONLY, audit_rows

from tundra.core.audit.actions import Action
from tundra.core.errors import InvalidInput, PermissionDenied
from tundra.core.identity import scopes
from tundra.core.identity.scopes import NON_ADMIN_SCOPES, SCOPES, require, validate_scopes
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal


def token(*granted: str, servers: tuple[str, ...] | None = None) -> Principal:
    return Principal(PrincipalKind.TOKEN, "tnd_live_AAAAAAAA", user_id="u1",
                     is_admin="admin" in granted, scopes=frozenset(granted),
                     resources={} if servers is None else {"server": servers}, token_id="t1")


def test_declared_scopes_are_resource_action_or_admin() -> None:
    for scope in SCOPES:
        assert scope == "admin" or scope.count(":") == 1
    assert {"servers:read", "servers:write", "sites:read", "sites:write", "tokens:read",
            "tokens:write", "audit:read", "users:read", "admin"} <= set(SCOPES)
    assert "admin" not in NON_ADMIN_SCOPES
    assert not any(s.endswith(":write") for s in NON_ADMIN_SCOPES - {"tokens:write"})


def test_validate_scopes() -> None:
    assert validate_scopes(["sites:read", "audit:read", "audit:read"]) == ("audit:read",
                                                                           "sites:read")
    with pytest.raises(InvalidInput, match="unknown scope"):
        validate_scopes(["servers:read", "servers:*"])
    with pytest.raises(InvalidInput, match="at least one"):
        validate_scopes([])


def test_undeclared_scope_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="undeclared"):
        scopes.allows(SYSTEM, "servers:nuke")


@SQLITE_ONLY
@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_cli_system_and_admin_users_are_not_scope_limited(services, scope) -> None:
    admin = services.users.get(ADMIN).as_principal()
    for principal in (cli_principal(), SYSTEM, admin):
        require(services, principal, scope, ("server", "web-9"))


@SQLITE_ONLY
@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_non_admin_users_get_read_scopes_and_their_tokens(services, bob, scope) -> None:
    if scope.endswith(":read") or scope == "tokens:write":
        require(services, bob.as_principal(), scope)
    else:
        with pytest.raises(PermissionDenied):
            require(services, bob.as_principal(), scope)


@SQLITE_ONLY
def test_agents_are_not_api_callers(services) -> None:
    with pytest.raises(PermissionDenied):
        require(services, Principal(PrincipalKind.AGENT, "a1"), "servers:read")


def test_token_in_scope_passes_without_an_audit_row(services) -> None:
    require(services, token("servers:read"), "servers:read")
    assert audit_rows(services, Action.TOKEN_DENIED) == []


def test_token_out_of_scope_is_403_with_an_audit_row(services) -> None:
    with pytest.raises(PermissionDenied, match="does not allow servers:write"):
        require(services, token("servers:read"), "servers:write", ("server", "web-1"))
    [row] = audit_rows(services, Action.TOKEN_DENIED)
    assert row["actor"] == "token:tnd_live_AAAAAAAA"
    assert row["resource"] == "server:web-1"
    assert row["details"] == {"scope": "servers:write", "reason": "scope", "token_id": "t1"}


def test_token_outside_its_resource_restriction_is_403_with_an_audit_row(services) -> None:
    restricted = token("servers:read", servers=("web-1",))
    require(services, restricted, "servers:read", ("server", "web-1"))
    require(services, restricted, "servers:read")  # listing: the service filters the rows
    with pytest.raises(PermissionDenied, match="on server web-2"):
        require(services, restricted, "servers:read", ("server", "web-2"))
    [row] = audit_rows(services, Action.TOKEN_DENIED)
    assert row["resource"] == "server:web-2"
    assert row["details"]["reason"] == "resource"


@SQLITE_ONLY
def test_admin_scope_allows_every_scope_but_keeps_resource_restrictions(services) -> None:
    for scope in SCOPES:
        require(services, token("admin"), scope, ("server", "any"))
    with pytest.raises(PermissionDenied):
        require(services, token("admin", servers=("web-1",)), "servers:write",
                ("server", "web-2"))


def test_a_real_token_through_the_fleet_service(services) -> None:
    # End to end with a verified token and a service that calls require().
    services.servers.add(cli_principal(), name="web-1", address="203.0.113.10", tags=[])
    services.servers.add(cli_principal(), name="web-2", address="203.0.113.11", tags=[])
    created = services.tokens.create(cli_principal(), name="r", scopes=["servers:read"],
                                     servers=["web-1"], owner=ADMIN)
    principal = services.tokens.verify(created.plaintext)
    assert services.servers.get(principal, "web-1").name == "web-1"
    with pytest.raises(PermissionDenied):
        services.servers.get(principal, "web-2")
    assert [r["resource"] for r in audit_rows(services, Action.TOKEN_DENIED)] == ["server:web-2"]
