"""``/api/v1/tokens``: the caller's API tokens (list, create, revoke) and ``/api/v1/me``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.responses import JSONResponse, Response

from tundra.core.audit.actions import Action
from tundra.core.identity.tokens import ApiToken, CreatedToken
from tundra.panel.api.endpoint import Call, Endpoint, Param, json_response
from tundra.panel.api.schemas import DEFAULT_TOKEN_LIFETIME, TOKEN_REF, ref


def _create(c: Call) -> CreatedToken:
    lifetime = c.body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    return c.services.tokens.create(
        c.principal,
        name=c.body["name"],
        scopes=c.body["scopes"],
        servers=c.body.get("servers", ()),
        kind=c.body.get("kind", "api"),
        expires_in=None if lifetime is None else timedelta(seconds=lifetime),
        request_id=c.request_id,
    )


def _created(created: CreatedToken, call: Call) -> Response:
    return JSONResponse(
        {"plaintext": created.plaintext, "token": created.token.as_dict()}, status_code=201
    )


def _me(token: ApiToken, call: Call) -> Response:
    principal = call.principal
    return JSONResponse(
        {
            "actor": principal.actor,
            "user": token.owner,
            "is_admin": principal.is_admin,
            "token": token.as_dict(),
        }
    )


def _tokens(tokens: list[ApiToken]) -> dict[str, Any]:
    return {"tokens": [t.as_dict() for t in tokens]}


ENDPOINTS = (
    Endpoint(
        "GET",
        "/api/v1/tokens",
        "listTokens",
        "List your tokens",
        call=lambda c: c.services.tokens.list(
            c.principal, include_revoked=c.query["include_revoked"], request_id=c.request_id
        ),
        render=json_response(_tokens),
        response=ref("TokenList"),
        scope="tokens:read",
        query=(
            Param(
                "include_revoked", {"type": "boolean", "default": False}, "also list revoked tokens"
            ),
        ),
        description="The tokens of the calling token's owner (an admin token sees every "
        "token). Never the token values: only their display prefix.",
    ),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        "createToken",
        "Create a token",
        call=_create,
        render=_created,
        ok=201,
        response=ref("CreatedToken"),
        body=ref("TokenCreate"),
        scope="tokens:write",
        audit=(Action.TOKEN_CREATE,),
        errors=(403, 409, 413, 415, 422),
        description="For the calling token's owner, with at most the calling token's scopes "
        "and servers. The plaintext is in this response only. An `admin` token "
        "needs a fresh interactive authentication and is refused here (403 "
        "`reauth_required`).",
    ),
    Endpoint(
        "DELETE",
        "/api/v1/tokens/{id}",
        "revokeToken",
        "Revoke a token",
        call=lambda c: c.services.tokens.revoke(c.principal, c.path["id"], request_id=c.request_id),
        render=json_response(lambda t: t.as_dict()),
        response=ref("Token"),
        path_params=(Param("id", TOKEN_REF, "token", required=True),),
        scope="tokens:write",
        audit=(Action.TOKEN_REVOKE,),
        errors=(403, 404, 409, 422),
        description="Revoking the token that makes the request is allowed; it stops working "
        "at once. Another user's token is `not_found`.",
    ),
    Endpoint(
        "GET",
        "/api/v1/me",
        "getMe",
        "Who the calling token is",
        call=lambda c: c.services.tokens.get(c.principal.token_id or ""),
        render=_me,
        response=ref("Me"),
        errors=(),
        description="Needs no scope: any valid token may see itself.",
    ),
)
