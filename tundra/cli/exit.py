"""Exit codes of the ``tundra`` command. Part of the public API: scripts rely on them.

Numbers follow sysexits(3) where one fits. ``docs/cli.md`` lists them and a test keeps the enum,
the mapping and the documentation in step.
"""

from __future__ import annotations

from enum import IntEnum

from tundra.core import errors


class ExitStatus(IntEnum):
    SUCCESS = 0
    #: A check ran and found a problem (audit verify, key verify).
    FAILURE = 1
    #: Bad command line or an invalid value.
    USAGE = 64
    #: An input file is malformed or truncated.
    DATA_ERROR = 65
    NOT_FOUND = 66
    #: Wrong credentials, an invalid token, or a TOTP code is needed.
    AUTH_FAILED = 67
    #: The database or KV store cannot be reached.
    UNAVAILABLE = 69
    #: An unexpected internal error (a bug: please report it).
    INTERNAL = 70
    #: The object exists already, or the state forbids the operation.
    CONFLICT = 73
    #: Too many failed attempts; try again later.
    THROTTLED = 75
    #: Not allowed, or a sensitive operation needs `tundra login` first.
    PERMISSION_DENIED = 77
    #: Settings are wrong or `tundra init` has not run.
    CONFIG = 78
    #: The master key or a data key is missing, corrupt, or not the right one.
    KEY_ERROR = 79


# Most specific first: the first matching class decides.
_MAPPING: tuple[tuple[type[errors.TundraError], ExitStatus], ...] = (
    (errors.Throttled, ExitStatus.THROTTLED),
    (errors.AuthenticationFailed, ExitStatus.AUTH_FAILED),
    (errors.PermissionDenied, ExitStatus.PERMISSION_DENIED),
    (errors.CommandRefused, ExitStatus.PERMISSION_DENIED),
    (errors.KeyMaterialError, ExitStatus.KEY_ERROR),
    (errors.IntegrityError, ExitStatus.FAILURE),
    (errors.InvalidFile, ExitStatus.DATA_ERROR),
    (errors.InvalidInput, ExitStatus.USAGE),
    (errors.NotFound, ExitStatus.NOT_FOUND),
    (errors.AlreadyExists, ExitStatus.CONFLICT),
    (errors.Conflict, ExitStatus.CONFLICT),
    (errors.StorageUnavailable, ExitStatus.UNAVAILABLE),
    (errors.ConfigError, ExitStatus.CONFIG),
    (errors.AuditMissing, ExitStatus.INTERNAL),
)


def exit_status_for(error: errors.TundraError) -> ExitStatus:
    for cls, status in _MAPPING:
        if isinstance(error, cls):
            return status
    return ExitStatus.FAILURE
