"""``/api/v1/servers``: the server inventory (list, show, add, change, delete)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from tundra.core.audit.actions import Action
from tundra.core.fleet.servers import Server
from tundra.panel.api.endpoint import Call, Endpoint, Param, json_response
from tundra.panel.api.schemas import SERVER_NAME, TAG, ref

NAME = Param("name", SERVER_NAME, "server", required=True)


def _one(server: Server) -> dict[str, Any]:
    return server.as_dict()


def _created(server: Server, call: Call) -> Response:
    return JSONResponse(
        server.as_dict(), status_code=201, headers={"Location": f"/api/v1/servers/{server.name}"}
    )


ENDPOINTS = (
    Endpoint(
        "GET",
        "/api/v1/servers",
        "listServers",
        "List servers",
        call=lambda c: c.services.servers.list(
            c.principal, tag=c.query.get("tag"), request_id=c.request_id
        ),
        render=json_response(lambda servers: {"servers": [s.as_dict() for s in servers]}),
        response=ref("ServerList"),
        scope="servers:read",
        query=(Param("tag", TAG, "only servers with this tag"),),
        description="A token restricted to some servers sees only those.",
    ),
    Endpoint(
        "POST",
        "/api/v1/servers",
        "createServer",
        "Add a server",
        call=lambda c: c.services.servers.add(
            c.principal,
            name=c.body["name"],
            address=c.body["address"],
            tags=c.body.get("tags", ()),
            join_token=c.body.get("join_token", False),
            request_id=c.request_id,
        ),
        render=_created,
        ok=201,
        response=ref("Server"),
        body=ref("ServerCreate"),
        scope="servers:write",
        audit=(Action.SERVER_CREATE,),
        errors=(403, 409, 413, 415, 422),
        description='With `"join_token": true` the answer also carries the server\'s first '
        "join token (`join_token`), made in the same transaction (audited as "
        "`fleet:join-token:create`) and shown this once; run its `enroll_command` on the server "
        "with the token in TUNDRA_JOIN_TOKEN.",
    ),
    Endpoint(
        "GET",
        "/api/v1/servers/{name}",
        "getServer",
        "Show a server",
        call=lambda c: c.services.servers.get(c.principal, c.path["name"], request_id=c.request_id),
        render=json_response(_one),
        response=ref("Server"),
        path_params=(NAME,),
        scope="servers:read",
        errors=(403, 404, 422),
    ),
    Endpoint(
        "PATCH",
        "/api/v1/servers/{name}",
        "updateServer",
        "Change a server's address or tags",
        call=lambda c: c.services.servers.update(
            c.principal,
            c.path["name"],
            address=c.body.get("address"),
            tags=c.body.get("tags"),
            request_id=c.request_id,
        ),
        render=json_response(_one),
        response=ref("Server"),
        path_params=(NAME,),
        body=ref("ServerUpdate"),
        scope="servers:write",
        audit=(Action.SERVER_UPDATE,),
        errors=(403, 404, 413, 415, 422),
        description="A change to the current values writes nothing and no audit row.",
    ),
    Endpoint(
        "DELETE",
        "/api/v1/servers/{name}",
        "deleteServer",
        "Delete a server",
        call=lambda c: c.services.servers.remove(
            c.principal, c.path["name"], request_id=c.request_id
        ),
        render=json_response(_one),
        response=ref("Server"),
        path_params=(NAME,),
        scope="servers:write",
        audit=(Action.SERVER_DELETE,),
        errors=(403, 404, 422),
        description="A sensitive operation: it needs a fresh interactive authentication, "
        "which a token can never give, so through the API it is always refused "
        "with 403 `reauth_required` (use the panel or `tundra server remove`).",
    ),
)
