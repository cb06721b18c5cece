"""The one error tree of Tundra.

Every expected failure is a :class:`TundraError` subclass. Each front end maps the tree once at
its boundary (CLI: ``ExitStatus``; HTTP: status + JSON body; gRPC: status code). Messages are
written for the operator: they name the problem and, where one exists, the fix. They never
contain a secret.
"""

from __future__ import annotations


class TundraError(Exception):
    """Base of all expected errors. Front ends show ``str(error)`` and never a traceback."""

    #: Stable machine-readable code, used in JSON error bodies and ``--json`` output.
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(TundraError):
    """A setting or the environment is wrong. CLI: exit CONFIG_ERROR; HTTP 500."""

    code = "config_error"


class NotInitialized(ConfigError):
    """``$TUNDRA_HOME`` has not been set up yet. The fix is ``tundra init``."""

    code = "not_initialized"


class InvalidInput(TundraError):
    """The caller gave a value that cannot be accepted. CLI: exit USAGE; HTTP 422."""

    code = "invalid_input"


class NotFound(TundraError):
    """The named object does not exist. CLI: exit NOT_FOUND; HTTP 404."""

    code = "not_found"


class AlreadyExists(TundraError):
    """An object with that name exists already. CLI: exit CONFLICT; HTTP 409."""

    code = "already_exists"


class Conflict(TundraError):
    """The operation conflicts with the current state. CLI: exit CONFLICT; HTTP 409."""

    code = "conflict"


class AuthenticationFailed(TundraError):
    """Credentials were wrong or unknown; the message never says which. CLI: AUTH_FAILED; 401."""

    code = "authentication_failed"


class Throttled(AuthenticationFailed):
    """Too many failures: refused even with the right credentials until ``retry_after``. 429."""

    code = "throttled"

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class TotpRequired(AuthenticationFailed):
    """The password was right and a TOTP code is needed to finish. Front ends ask for it."""

    code = "totp_required"


class TokenInvalid(AuthenticationFailed):
    """A bearer token was malformed, had a bad checksum, was unknown, expired or revoked.

    All of these give the same public answer (HTTP 401) so a caller learns nothing from the
    difference; ``reason`` is for the audit log and the operator's own diagnostics only.
    """

    code = "token_invalid"

    def __init__(self, reason: str) -> None:
        super().__init__("the API token is not valid")
        self.reason = reason


class PermissionDenied(TundraError):
    """The principal is known but not allowed to do this. CLI: PERMISSION_DENIED; HTTP 403."""

    code = "permission_denied"


class ReauthRequired(PermissionDenied):
    """A sensitive operation needs an authentication within the re-auth window.

    Interactive front ends ask for the password (+TOTP) and retry; tokens can never satisfy it.
    """

    code = "reauth_required"


class AgentRefused(PermissionDenied):
    """An agent's call or enrollment was refused: revoked, unknown, wrong identity or source,
    a used or expired join token, a CSR asking for names. ``reason`` is a short stable word for
    logs and audit rows. gRPC: PERMISSION_DENIED; HTTP 403.
    """

    code = "agent_refused"

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class CommandRefused(TundraError):
    """A signed command failed the agent's checks (signature, audience, freshness, nonce, type).

    ``reason`` is one of: signature, key, audience, expired, not-yet-valid, ttl, replay, type,
    payload, malformed. The agent reports it up the session and does not execute the command.
    """

    code = "command_refused"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class CommandFailed(TundraError):
    """An allowed, verified command could not be carried out on the host: the agent reports it
    FAILED with this message. CLI (`tundra server ping` and friends): exit FAILURE.
    """

    code = "command_failed"


class KeyMaterialError(TundraError):
    """The master key or a data key is missing, corrupt or not the right one. CLI: KEY_ERROR."""

    code = "key_error"


class DecryptionFailed(KeyMaterialError):
    """An encrypted value did not decrypt: tampered, moved to another row, or its term retired.

    Never answered with an empty value: nothing is deployed with a secret missing.
    """

    code = "decryption_failed"


class IntegrityError(TundraError):
    """Stored or exported data failed an integrity check (the audit chain). CLI: INTEGRITY."""

    code = "integrity_error"


class StorageUnavailable(TundraError):
    """The database or the KV store cannot be reached. CLI: UNAVAILABLE; HTTP 503."""

    code = "unavailable"


class AuditMissing(TundraError):
    """A unit of work changed state without recording an audit event: a programming error."""

    code = "audit_missing"


class InvalidFile(TundraError):
    """An input file (export, checkpoint, key) is malformed or truncated. CLI: DATA_ERROR."""

    code = "invalid_file"
