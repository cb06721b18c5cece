"""API tokens: issuing rules, storage of the hash only, and every refusal of verify()."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import timedelta

import pytest
from idhelpers import ADMIN, ADMIN_PASSWORD, BOB, SQLITE_ONLY, audit_rows

from tundra.core.audit.actions import Action
from tundra.core.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ReauthRequired,
    TokenInvalid,
)
from tundra.core.identity.token_format import TOKEN_PATTERN, generate
from tundra.core.identity.tokens import TokenService
from tundra.core.principal import SYSTEM, PrincipalKind, cli_principal
from tundra.core.services import Services


def create(services, **kwargs):
    options = {"name": "ci", "scopes": ["servers:read"], "owner": ADMIN, **kwargs}
    return services.tokens.create(cli_principal(), **options)


def reason_of(services, plaintext: str, **kwargs) -> str:
    with pytest.raises(TokenInvalid) as caught:
        services.tokens.verify(plaintext, **kwargs)
    assert str(caught.value) == "the API token is not valid"  # one public answer for all
    return caught.value.reason


# --- issuing -----------------------------------------------------------------------------


def test_create_returns_the_plaintext_once_and_stores_only_its_hash(services) -> None:
    created = create(services, servers=["web-1"], expires_in=timedelta(days=30))
    plaintext = created.plaintext
    assert re.fullmatch(TOKEN_PATTERN, plaintext)
    assert plaintext.startswith("tnd_live_")
    assert plaintext not in repr(created)
    token = created.token
    assert token.display_prefix == plaintext[:17]
    assert token.scopes == ("servers:read",)
    assert token.servers == ("web-1",)
    assert token.owner == ADMIN
    assert token.status == "active"
    assert token.expires_at is not None
    with services.db.read() as tx:
        row = tx.fetchone("SELECT * FROM api_tokens WHERE id = :id", {"id": token.id})
        log = json.dumps(tx.fetchall("SELECT * FROM audit_log"))
    assert bytes(row["token_hash"]) == hashlib.sha256(plaintext.encode()).digest()
    stored = json.dumps({k: v.hex() if isinstance(v, bytes | memoryview) else v
                         for k, v in row.items()}, default=str)
    assert plaintext not in stored
    assert plaintext[17:] not in stored  # not even the part after the display prefix
    assert plaintext not in log
    assert json.loads(row["resources"]) == {"server": ["web-1"]}
    [audit] = audit_rows(services, Action.TOKEN_CREATE)
    assert audit["resource"] == f"token:{token.display_prefix}"
    assert audit["details"]["scopes"] == ["servers:read"]


@SQLITE_ONLY
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scopes": []}, "at least one scope"),
    ({"scopes": ["servers:delete"]}, "unknown scope"),
    ({"scopes": ["servers"]}, "unknown scope"),
    ({"kind": "ssh"}, "unknown token kind"),
    ({"servers": ["bad name"]}, "invalid server name"),
    ({"expires_in": timedelta(0)}, "must be positive"),
    ({"expires_in": timedelta(days=-1)}, "must be positive"),
    ({"name": ""}, "printable"),
    ({"name": "x" * 65}, "printable"),
    ({"name": "new\nline"}, "printable"),
])
def test_invalid_requests_are_refused(services, kwargs, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        create(services, **kwargs)
    assert services.tokens.list(SYSTEM, include_revoked=True) == []


@SQLITE_ONLY
def test_scopes_are_deduplicated_and_sorted(services) -> None:
    token = create(services, scopes=["sites:read", "audit:read", "sites:read"]).token
    assert token.scopes == ("audit:read", "sites:read")


def test_unknown_owner_is_not_found(services) -> None:
    with pytest.raises(NotFound):
        create(services, owner="nobody")


def test_cli_default_owner_is_the_cli_user(services) -> None:
    token = services.tokens.create(cli_principal(), name="x", scopes=["servers:read"]).token
    assert token.owner == ADMIN


def test_admin_token_needs_a_fresh_authentication(services) -> None:
    with pytest.raises(ReauthRequired, match="tundra login"):
        create(services, scopes=["admin"])
    assert services.tokens.list(SYSTEM, include_revoked=True) == []
    services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    assert create(services, scopes=["admin"]).token.scopes == ("admin",)


def test_a_token_can_never_issue_an_admin_token(services) -> None:
    services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    admin_token = services.tokens.verify(create(services, scopes=["admin"]).plaintext)
    with pytest.raises(ReauthRequired, match="a token can never perform a sensitive operation"):
        services.tokens.create(admin_token, name="escalate", scopes=["admin"])


def test_a_token_issues_only_narrower_tokens_for_its_owner(services, bob) -> None:
    parent = services.tokens.verify(
        create(services, scopes=["tokens:write", "servers:read"], servers=["web-1"]).plaintext)
    child = services.tokens.create(parent, name="child", scopes=["servers:read"],
                                   servers=["web-1"])
    assert child.token.owner == ADMIN
    for kwargs in ({"scopes": ["servers:write"], "servers": ["web-1"]},   # a scope it lacks
                   {"scopes": ["servers:read"]},                          # unrestricted
                   {"scopes": ["servers:read"], "servers": ["web-2"]},    # another server
                   {"scopes": ["servers:read"], "servers": ["web-1"], "owner": BOB}):
        with pytest.raises(PermissionDenied):
            services.tokens.create(parent, name="wider", **kwargs)


def test_a_token_minted_token_never_outlives_its_parent(services) -> None:
    parent = services.tokens.verify(
        create(services, scopes=["tokens:write", "servers:read"],
               expires_in=timedelta(hours=1)).plaintext)
    for expires_in in (None, timedelta(hours=2)):
        with pytest.raises(InvalidInput, match="expire no later than itself"):
            services.tokens.create(parent, name="forever", scopes=["servers:read"],
                                   expires_in=expires_in)
    child = services.tokens.create(parent, name="shorter", scopes=["servers:read"],
                                   expires_in=timedelta(minutes=30))
    assert services.tokens.verify(child.plaintext).token_id == child.token.id


def test_revoking_a_token_revokes_every_token_it_minted(services) -> None:
    made = create(services, scopes=["tokens:write", "servers:read"])
    parent = services.tokens.verify(made.plaintext)
    child = services.tokens.create(parent, name="child", scopes=["tokens:write", "servers:read"])
    grandchild = services.tokens.create(services.tokens.verify(child.plaintext),
                                        name="grandchild", scopes=["servers:read"])
    unrelated = create(services, scopes=["servers:read"])
    services.tokens.revoke(cli_principal(), made.token.id)
    for plaintext in (made.plaintext, child.plaintext, grandchild.plaintext):
        assert reason_of(services, plaintext) == "revoked"
    assert services.tokens.verify(unrelated.plaintext)
    revoked = {row["details"]["id"] for row in audit_rows(services, Action.TOKEN_REVOKE)}
    assert revoked == {made.token.id, child.token.id, grandchild.token.id}


def test_a_token_without_tokens_write_cannot_issue(services) -> None:
    reader = services.tokens.verify(create(services, scopes=["servers:read"]).plaintext)
    with pytest.raises(PermissionDenied):
        services.tokens.create(reader, name="x", scopes=["servers:read"])
    [denied] = audit_rows(services, Action.TOKEN_DENIED)
    assert denied["actor"] == f"token:{reader.name}"
    assert denied["details"]["scope"] == "tokens:write"


def test_a_non_admin_user_gets_read_scopes_for_themselves_only(services, bob) -> None:
    as_bob = bob.as_principal()
    mine = services.tokens.create(as_bob, name="mine", scopes=["servers:read", "audit:read"])
    assert mine.token.owner == BOB
    with pytest.raises(PermissionDenied):
        services.tokens.create(as_bob, name="w", scopes=["servers:write"])
    with pytest.raises(PermissionDenied):
        services.tokens.create(as_bob, name="other", scopes=["servers:read"], owner=ADMIN)


def test_a_token_never_exceeds_its_owner(services, bob) -> None:
    with pytest.raises(PermissionDenied, match="not an administrator"):
        create(services, owner=BOB, scopes=["servers:write"])
    assert create(services, owner=BOB, scopes=["servers:read"]).token.owner == BOB


def test_disabled_owner_gets_no_new_token(services, bob) -> None:
    services.users.disable(cli_principal(), BOB)
    with pytest.raises(Conflict, match="disabled"):
        create(services, owner=BOB)


# --- verifying ---------------------------------------------------------------------------


def test_verify_gives_a_token_principal(services) -> None:
    created = create(services, scopes=["servers:read", "servers:write"], servers=["web-1"])
    principal = services.tokens.verify(created.plaintext)
    assert principal.kind is PrincipalKind.TOKEN
    assert principal.name == created.token.display_prefix
    assert principal.actor == f"token:{created.token.display_prefix}"
    assert principal.scopes == {"servers:read", "servers:write"}
    assert principal.resources == {"server": ("web-1",)}
    assert principal.user_id == services.users.get(ADMIN).id
    assert principal.token_id == created.token.id
    assert not principal.is_admin


# 28 zero bytes with a zero checksum: well formed, canonical, and its CRC is not 0.
ZERO_CHECKSUM = "tnd_live_" + base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()


class _Explodes:
    """Stands in for the database and the KV store: any use fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"storage was used ({name}) before the token was checked")


@pytest.fixture
def storage_free(settings) -> TokenService:
    services = Services(settings)
    services.db = _Explodes()  # type: ignore[assignment]
    services.kv = _Explodes()  # type: ignore[assignment]
    return TokenService(services)


@SQLITE_ONLY
@pytest.mark.parametrize(("token", "reason"), [
    ("", "malformed"),
    ("tnd_live_short", "malformed"),
    ("ghp_" + "a" * 36, "malformed"),
    ("tnd_live_" + "A" * 43, "checksum"),
    (ZERO_CHECKSUM, "checksum"),
    (generate("test"), "wrong_env"),
    (generate("staging"), "wrong_env"),
])
def test_format_checksum_and_env_are_checked_without_storage(storage_free, token, reason) -> None:
    with pytest.raises(TokenInvalid) as caught:
        storage_free.verify(token)
    assert caught.value.reason == reason


@SQLITE_ONLY
def test_the_storage_free_harness_does_catch_a_lookup(storage_free) -> None:
    # The control: a well-formed token for the right env does reach the database.
    with pytest.raises(AssertionError, match="storage was used"):
        storage_free.verify(generate("live"))


def test_unknown_token(services) -> None:
    create(services)
    assert reason_of(services, generate("live")) == "unknown"


def test_expired_token(services) -> None:
    created = create(services, expires_in=timedelta(hours=1))
    services.tokens.verify(created.plaintext)
    with services.db.transaction() as tx:
        tx.execute("UPDATE api_tokens SET expires_at = '2020-01-01T00:00:00.000000Z'")
    assert reason_of(services, created.plaintext) == "expired"
    assert services.tokens.list(SYSTEM)[0].status == "expired"


def test_revoked_token(services) -> None:
    created = create(services)
    services.tokens.revoke(cli_principal(), created.token.display_prefix)
    assert reason_of(services, created.plaintext) == "revoked"


def test_token_of_a_disabled_owner(services, bob) -> None:
    created = create(services, owner=BOB)
    services.users.disable(cli_principal(), BOB)
    assert reason_of(services, created.plaintext) == "owner_disabled"
    services.users.enable(cli_principal(), BOB)
    assert services.tokens.verify(created.plaintext).user_id == bob.id


def test_token_kinds_are_kept_to_their_endpoint(services) -> None:
    mcp = create(services, kind="mcp")
    api = create(services)
    assert reason_of(services, mcp.plaintext) == "wrong_kind"
    assert services.tokens.verify(mcp.plaintext, kind="mcp").kind is PrincipalKind.TOKEN
    assert reason_of(services, api.plaintext, kind="mcp") == "wrong_kind"


def test_admin_principal_only_with_the_admin_scope(services) -> None:
    services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    assert services.tokens.verify(create(services, scopes=["admin"]).plaintext).is_admin


def _last_used(services, token_id: str) -> str | None:
    with services.db.read() as tx:
        return tx.fetchval("SELECT last_used_at FROM api_tokens WHERE id = :id", {"id": token_id})


def _audit_count(services) -> int:
    with services.db.read() as tx:
        return int(tx.fetchval("SELECT count(*) FROM audit_log"))


def test_last_used_is_written_at_most_once_per_interval_and_not_audited(services, monkeypatch
                                                                        ) -> None:
    created = create(services)
    before = _audit_count(services)
    assert _last_used(services, created.token.id) is None
    services.tokens.verify(created.plaintext)
    first = _last_used(services, created.token.id)
    assert first is not None
    services.tokens.verify(created.plaintext)
    assert _last_used(services, created.token.id) == first  # within the 60 s interval
    later = time.time() + 61  # the interval has passed
    monkeypatch.setattr("tundra.core.identity.tokens.epoch", lambda: later)
    services.tokens.verify(created.plaintext)
    assert _last_used(services, created.token.id) > first
    assert _audit_count(services) == before


# --- listing and revoking ----------------------------------------------------------------


def test_list_and_revoke(services, bob) -> None:
    a = create(services, name="a")
    b = create(services, name="b", owner=BOB)
    assert [t.name for t in services.tokens.list(cli_principal())] == ["a", "b"]
    assert [t.name for t in services.tokens.list(bob.as_principal())] == ["b"]
    revoked = services.tokens.revoke(cli_principal(), a.token.id)
    assert revoked.status == "revoked"
    assert [t.name for t in services.tokens.list(cli_principal())] == ["b"]
    assert [t.name for t in services.tokens.list(cli_principal(), include_revoked=True)] == [
        "a", "b"]
    [row] = audit_rows(services, Action.TOKEN_REVOKE)
    assert row["resource"] == f"token:{a.token.display_prefix}"
    with pytest.raises(Conflict, match="revoked already"):
        services.tokens.revoke(cli_principal(), a.token.id)
    with pytest.raises(NotFound):
        services.tokens.revoke(cli_principal(), "tnd_live_nothere")
    # A non-admin cannot see, let alone revoke, someone else's token.
    c = create(services, name="c")
    with pytest.raises(NotFound):
        services.tokens.revoke(bob.as_principal(), c.token.id)
    services.tokens.revoke(bob.as_principal(), b.token.display_prefix)
    assert b.token.as_dict()["prefix"] == b.token.display_prefix


def test_list_never_shows_a_secret(services) -> None:
    created = create(services)
    listed = json.dumps([t.as_dict() for t in services.tokens.list(cli_principal())])
    assert created.plaintext not in listed
    assert created.plaintext[17:] not in listed
