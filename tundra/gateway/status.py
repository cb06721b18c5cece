"""The one mapping from Tundra's error tree to gRPC status codes (the gateway's boundary)."""

from __future__ import annotations

import grpc

from tundra.core.errors import (
    AgentRefused,
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    InvalidFile,
    InvalidInput,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    Throttled,
    TundraError,
)

_CODES: tuple[tuple[type[TundraError], grpc.StatusCode], ...] = (
    (Throttled, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AuthenticationFailed, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidFile, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: TundraError) -> grpc.StatusCode:
    if isinstance(error, AgentRefused) and error.reason in ("unknown", "serial-unknown"):
        return grpc.StatusCode.UNAUTHENTICATED
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION
