"""Audit actions are data: ``domain:subject:verb``, one enum, nothing spelt by hand elsewhere."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    SYSTEM_INIT = "system:home:init"

    KEYS_KEYRING_INIT = "keys:keyring:init"
    KEYS_MASTER_ROTATE = "keys:master:rotate"
    KEYS_DATA_ROTATE_START = "keys:data:rotate-start"
    KEYS_DATA_REWRAP = "keys:data:rewrap"
    KEYS_DATA_ROTATE_FINISH = "keys:data:rotate-finish"

    USER_CREATE = "identity:user:create"
    USER_PASSWORD_CHANGE = "identity:user:password-change"
    USER_PASSWORD_REHASH = "identity:user:password-rehash"
    USER_DISABLE = "identity:user:disable"
    USER_ENABLE = "identity:user:enable"
    USER_LOGIN = "identity:user:login"
    USER_LOGIN_FAILED = "identity:user:login-failed"
    TOTP_ENROLL = "identity:totp:enroll"
    TOTP_DISABLE = "identity:totp:disable"
    TOTP_REPLAY_REFUSED = "identity:totp:replay-refused"
    TOTP_VERIFY = "identity:totp:verify"
    REAUTH_GRANT = "identity:reauth:grant"
    SESSION_CREATE = "identity:session:create"
    SESSION_LOGOUT = "identity:session:logout"

    TOKEN_CREATE = "identity:token:create"
    TOKEN_REVOKE = "identity:token:revoke"
    TOKEN_DENIED = "identity:token:denied"

    PKI_CA_CREATE = "pki:ca:create"
    PKI_CA_ROTATE = "pki:ca:rotate"
    PKI_CA_RETIRE = "pki:ca:retire"
    GATEWAY_CERT_ISSUE = "pki:gateway-cert:issue"
    COMMAND_KEY_CREATE = "pki:command-key:create"
    TLS_CERT_ISSUE = "pki:tls-cert:issue"

    SERVER_CREATE = "fleet:server:create"
    SERVER_UPDATE = "fleet:server:update"
    SERVER_DELETE = "fleet:server:delete"

    JOIN_TOKEN_CREATE = "fleet:join-token:create"
    AGENT_ENROLL = "fleet:agent:enroll"
    AGENT_ENROLL_REFUSED = "fleet:agent:enroll-refused"
    AGENT_CERT_RENEW = "fleet:agent:cert-renew"
    AGENT_REVOKE = "fleet:agent:revoke"
    AGENT_REFUSED = "fleet:agent:refused"

    COMMAND_ISSUE = "fleet:command:issue"
    COMMAND_COMPLETE = "fleet:command:complete"
    COMMAND_REFUSED = "fleet:command:refused"
    COMMAND_EXPIRE = "fleet:command:expire"
    COMMAND_CROSS_AGENT = "fleet:command:cross-agent-refused"

    ACCEPTANCE_RUN_START = "acceptance:run:start"
    ACCEPTANCE_RUN_FINISH = "acceptance:run:finish"
