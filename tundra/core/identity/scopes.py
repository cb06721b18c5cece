"""Scopes: the declared set of ``resource:action`` permissions and the one check that uses them.

Users and the CLI are not scope-limited (a non-admin user gets the read scopes and the management
of their own tokens); a token principal needs the scope, or ``admin``, and when it is restricted
to named resources, the resource too. Every refusal of a token writes an audit row in its own
unit of work, so :func:`require` must be called before the caller opens its own unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable

from tundra.core.audit.actions import Action
from tundra.core.errors import InvalidInput, PermissionDenied
from tundra.core.principal import Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.uow import record_only

ADMIN = "admin"

#: Every scope a token can carry, with the help text shown by ``tundra token create --help``.
SCOPES: dict[str, str] = {
    "servers:read": "list and show servers",
    "servers:write": "add, change and delete servers",
    "sites:read": "list and show sites",
    "sites:write": "create, change and delete sites",
    "tokens:read": "list the owner's API tokens",
    "tokens:write": "create and revoke the owner's API tokens",
    "audit:read": "read and export the audit log",
    "users:read": "list and show users",
    ADMIN: "everything, including user management (issuing one needs a recent authentication)",
}

#: What a non-administrator may do, and so the most a token owned by one may carry.
NON_ADMIN_SCOPES: frozenset[str] = frozenset(
    {s for s in SCOPES if s.endswith(":read")} | {"tokens:write"}
)

#: Resource kinds a token can be restricted to (``{"server": ["web-1"]}``).
RESOURCE_KINDS = frozenset({"server"})


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes sorted and de-duplicated; InvalidInput names any that is not declared."""
    chosen = sorted(set(scopes))
    if not chosen:
        raise InvalidInput("a token needs at least one scope", hint=_known())
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown:
        raise InvalidInput(f"unknown scope(s): {', '.join(unknown)}", hint=_known())
    return tuple(chosen)


def _known() -> str:
    return "known scopes: " + ", ".join(SCOPES)


def allows(principal: Principal, scope: str, resource: tuple[str, str] | None = None) -> bool:
    """Whether ``principal`` may use ``scope`` (on ``resource``); no side effects."""
    if scope not in SCOPES:
        raise ValueError(f"undeclared scope {scope!r}")  # a programming error, not input
    if principal.kind in (PrincipalKind.SYSTEM, PrincipalKind.CLI):
        return True
    if principal.kind is PrincipalKind.USER:
        return principal.is_admin or scope in NON_ADMIN_SCOPES
    if principal.kind is not PrincipalKind.TOKEN:
        return False
    if ADMIN not in principal.scopes and scope not in principal.scopes:
        return False
    if resource is not None:
        kind, name = resource
        allowed = principal.resources.get(kind)
        if allowed is not None and name not in allowed:
            return False
    return True


def require(
    services: Services,
    principal: Principal,
    scope: str,
    resource: tuple[str, str] | None = None,
    *,
    request_id: str | None = None,
) -> None:
    """Raise PermissionDenied unless ``principal`` may use ``scope`` (on ``resource``).

    A token's refusal is audited (``TOKEN_DENIED``) in its own committed unit of work, so the
    row stays even though the request fails: call this before opening your unit of work.
    """
    if allows(principal, scope, resource):
        return
    target = f"{resource[0]}:{resource[1]}" if resource else f"scope:{scope}"
    what = f"{scope} on {resource[0]} {resource[1]}" if resource else scope
    if principal.kind is PrincipalKind.TOKEN:
        reason = (
            "scope"
            if (ADMIN not in principal.scopes and scope not in principal.scopes)
            else "resource"
        )
        record_only(
            services.db,
            principal,
            Action.TOKEN_DENIED,
            target,
            {"scope": scope, "reason": reason, "token_id": principal.token_id},
            request_id=request_id,
        )
        raise PermissionDenied(f"this token does not allow {what}")
    raise PermissionDenied(f"{principal.actor} is not allowed {what}")


def require_server(
    services: Services,
    principal: Principal,
    scope: str,
    server_name: str | None = None,
    *,
    request_id: str | None = None,
) -> None:
    """:func:`require` for a servers scope, on one named server when ``server_name`` is given."""
    require(
        services,
        principal,
        scope,
        ("server", server_name) if server_name else None,
        request_id=request_id,
    )
