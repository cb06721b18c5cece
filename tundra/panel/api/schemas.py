"""The API's JSON schemas: published in the OpenAPI document and enforced on every request.

Patterns come from the core's own rules where the core has one (server names, tags, scopes), so
the document describes exactly what the core accepts. Every pattern is anchored (``^…$``).
"""

from __future__ import annotations

from typing import Any

from tundra.core.audit.chain import ROW_COLUMNS
from tundra.core.fleet.servers import NAME_PATTERN, TAG_PATTERN
from tundra.core.identity.scopes import SCOPES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


TIME = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
SERVER_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 63,
    "pattern": anchored(NAME_PATTERN),
}
TAG: Schema = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": anchored(TAG_PATTERN)}
# RFC 3339 date-time, or a bare date (midnight UTC); a time without an offset is UTC.
TIME_PARAM: Schema = {
    "type": "string",
    "format": "date-time",
    "maxLength": 40,
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}"
    r"(?:\.[0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?$",
    "description": "RFC 3339 date-time (2025-01-31T12:00:00Z) or date (2025-01-31)",
}
#: A filter value: printable text without control characters.
FILTER_TEXT: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": r"^[^\x00-\x1f\x7f]+$",
}
TOKEN_REF: Schema = {
    "type": "string",
    "pattern": r"^(?:[0-9a-f]{32}|tnd_[a-z0-9]{1,16}_[A-Za-z0-9_-]{8})$",
    "description": "The token id, or its display prefix (tnd_live_XXXXXXXX)",
}
CURSOR: Schema = {
    "type": "string",
    "pattern": r"^[0-9]{1,18}$",
    "description": "The `next` value of the previous page (opaque)",
}
MAX_TOKEN_LIFETIME = 5 * 366 * 86400
DEFAULT_TOKEN_LIFETIME = 90 * 86400

#: Agent.connection() values (null: the server has no agent).
CONNECTION_STATES: list[str | None] = ["connected", "disconnected", "never", "revoked", None]
#: The server's agent (active, else newest), or null before the first enrollment.
AGENT_VIEW: Schema = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": [
        "id",
        "status",
        "connection",
        "cert_serial",
        "cert_fingerprint",
        "cert_not_after",
        "agent_version",
        "hostname",
        "facts",
        "connected_at",
        "last_seen_at",
        "last_address",
        "enrolled_at",
        "revoked_at",
    ],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "connection": {"type": "string", "enum": ["connected", "disconnected", "never", "revoked"]},
        "cert_serial": {"type": "string", "description": "Lowercase hex"},
        "cert_fingerprint": {"type": "string", "description": "SHA-256 of the DER, hex"},
        "cert_not_after": TIME,
        "agent_version": {"type": "string"},
        "hostname": {"type": "string"},
        "facts": {"type": "object", "description": "What the agent reported when it connected"},
        "connected_at": NULLABLE_TIME,
        "last_seen_at": NULLABLE_TIME,
        "last_address": {"type": ["string", "null"]},
        "enrolled_at": TIME,
        "revoked_at": NULLABLE_TIME,
    },
}

COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "additionalProperties": False,
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "message", "request_id"],
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable"},
                    "message": {"type": "string", "description": "One line for a person"},
                    "request_id": {
                        "type": "string",
                        "description": "Also in X-Request-ID and the audit log",
                    },
                },
            }
        },
    },
    "Server": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "name", "address", "tags", "status", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"},
            "name": SERVER_NAME,
            "address": {"type": "string"},
            "tags": {"type": "array", "items": TAG},
            "status": {"type": "string", "description": "pending, enrolled or revoked"},
            "created_at": TIME,
            "updated_at": TIME,
            "connection": {
                "type": ["string", "null"],
                "enum": CONNECTION_STATES,
                "description": "The agent's connection state; null before the first enrollment",
            },
            "agent": AGENT_VIEW,
            "join_token": ref("JoinToken"),
        },
    },
    "JoinToken": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "token",
            "server_name",
            "expires_at",
            "ca_fingerprint",
            "panel_url",
            "enroll_command",
        ],
        "description": "Returned once, by the request that created the server; never stored",
        "properties": {
            "token": {"type": "string", "pattern": r"^tjn1\.[a-z2-7]{52}\.[0-9a-f]{64}$"},
            "server_name": SERVER_NAME,
            "expires_at": TIME,
            "ca_fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "panel_url": {"type": "string"},
            "enroll_command": {
                "type": "string",
                "description": "Run on the server with the token in TUNDRA_JOIN_TOKEN",
            },
        },
    },
    "ServerList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["servers"],
        "properties": {"servers": {"type": "array", "items": ref("Server")}},
    },
    "ServerCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "address"],
        "properties": {
            "name": SERVER_NAME,
            "address": {
                "type": "string",
                "minLength": 1,
                "maxLength": 253,
                "description": "IPv4/IPv6 address or DNS host name",
            },
            "tags": {"type": "array", "maxItems": 64, "items": TAG},
            "join_token": {
                "type": "boolean",
                "default": False,
                "description": "Also make the server's first join token (returned once)",
            },
        },
    },
    "ServerUpdate": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "address": {"type": "string", "minLength": 1, "maxLength": 253},
            "tags": {
                "type": "array",
                "maxItems": 64,
                "items": TAG,
                "description": "Replaces the whole tag list",
            },
        },
    },
    "Token": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "name",
            "prefix",
            "owner",
            "kind",
            "scopes",
            "servers",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "status",
        ],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "prefix": {"type": "string", "description": "Display prefix; never the token"},
            "owner": {"type": "string"},
            "kind": {"type": "string", "enum": ["api", "mcp"]},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "servers": {"type": "array", "items": {"type": "string"}},
            "created_at": TIME,
            "expires_at": NULLABLE_TIME,
            "last_used_at": NULLABLE_TIME,
            "revoked_at": NULLABLE_TIME,
            "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        },
    },
    "TokenList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["tokens"],
        "properties": {"tokens": {"type": "array", "items": ref("Token")}},
    },
    "TokenCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "scopes"],
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "pattern": r"^[^\x00-\x1f\x7f]+$",
            },
            "scopes": {
                "type": "array",
                "minItems": 1,
                "maxItems": len(SCOPES),
                "uniqueItems": True,
                "items": {"type": "string", "enum": list(SCOPES)},
                "description": "At most the calling token's own scopes; `admin` is "
                "refused (403 reauth_required)",
            },
            "servers": {
                "type": "array",
                "maxItems": 64,
                "uniqueItems": True,
                "items": SERVER_NAME,
                "description": "Restrict the new token to these servers",
            },
            "expires_in": {
                "type": ["integer", "null"],
                "minimum": 60,
                "maximum": MAX_TOKEN_LIFETIME,
                "default": DEFAULT_TOKEN_LIFETIME,
                "description": "Lifetime in seconds; null: never expires",
            },
            "kind": {"type": "string", "enum": ["api", "mcp"], "default": "api"},
        },
    },
    "CreatedToken": {
        "type": "object",
        "additionalProperties": False,
        "required": ["plaintext", "token"],
        "properties": {
            "plaintext": {"type": "string", "description": "Shown this once, never again"},
            "token": ref("Token"),
        },
    },
    "AuditEntry": {
        "type": "object",
        "additionalProperties": False,
        "required": list(ROW_COLUMNS),
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "occurred_at": TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "resource": {"type": "string"},
            "request_id": {"type": "string"},
            "details": {"type": "object"},
            "prev_hash": {"type": "string"},
            "chain_hash": {"type": "string"},
        },
    },
    "AuditPage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["entries", "next"],
        "properties": {
            "entries": {"type": "array", "items": ref("AuditEntry")},
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last",
            },
        },
    },
    "AuditVerify": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean"}},
        "description": "The verification report (see docs/audit.md)",
    },
    "Me": {
        "type": "object",
        "additionalProperties": False,
        "required": ["actor", "user", "is_admin", "token"],
        "properties": {
            "actor": {"type": "string", "description": "As the audit log names you"},
            "user": {"type": "string", "description": "The token's owner"},
            "is_admin": {"type": "boolean"},
            "token": ref("Token"),
        },
    },
    "OpenApi": {"type": "object", "description": "This document"},
}
