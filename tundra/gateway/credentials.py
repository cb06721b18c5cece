"""The gateway's TLS material: server chain, key and client CA bundle, swapped without a restart.

gRPC asks :meth:`CredentialSource.fetch` before every new handshake. Reading the files (and the CA
bundle from the database) on each handshake would cost a handshake storm dearly, so the PEMs are
cached and re-read only when a watched file changes (a renewed gateway certificate, a rotated CA
rewrites them) or when the cache is older than ``max_age`` (a previous CA reaching its retire_at
shrinks the bundle without touching a file). The files are looked at (``stat``) at most once per
``stat_interval``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from tundra.gateway.events import event

Pems = tuple[bytes, bytes, bytes]
FileStamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: Sequence[Path]) -> FileStamp:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_mtime_ns, st.st_ino, st.st_size))
    return tuple(stamps)


def configuration(pems: Pems) -> grpc.ServerCertificateConfiguration:
    chain, key, bundle = pems
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=bundle)


class CredentialSource:
    def __init__(
        self,
        load: Callable[[], Pems],
        watched: Callable[[], Sequence[Path]],
        *,
        max_age: float = 60.0,
        stat_interval: float = 1.0,
    ) -> None:
        self._load = load
        self._watched = watched
        self._max_age = max_age
        self._stat_interval = stat_interval
        self._lock = threading.Lock()
        self._pems: Pems | None = None
        self._stamp: FileStamp = ()
        self._loaded_at = 0.0
        self._statted_at = 0.0
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.reloads = 0

    @property
    def pems(self) -> Pems:
        if self._pems is None:
            raise RuntimeError("credentials not loaded")
        return self._pems

    @property
    def ca_bundle(self) -> bytes:
        return self.pems[2]

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """Load the PEMs (blocking) and return the configuration the server starts with."""
        with self._lock:
            self._reload_locked(time.monotonic())
            self._pending = None
            return configuration(self.pems)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the material changed, else None (keep)."""
        try:
            with self._lock:
                now = time.monotonic()
                if now - self._statted_at >= self._stat_interval:
                    self._statted_at = now
                    if _stamp(self._watched()) != self._stamp:
                        self._reload_locked(now)
                pending, self._pending = self._pending, None
                return pending
        except Exception as exc:
            # A failed reload must not fail the handshake: the current material stays in use.
            event("gateway.credentials-error", error=repr(exc))
            return None

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read when a file changed or the cache is old (blocking; off the event loop)."""
        with self._lock:
            now = time.monotonic()
            self._statted_at = now
            stale = now - self._loaded_at >= self._max_age
            if force or stale or _stamp(self._watched()) != self._stamp:
                return self._reload_locked(now)
            return False

    def _reload_locked(self, now: float) -> bool:
        stamp = _stamp(self._watched())
        pems = self._load()
        # The files were just looked at: the next stat is due a whole interval from now (not
        # from 0, which on a host up longer than the interval would mean "at once").
        self._loaded_at = self._statted_at = now
        self._stamp = stamp
        if pems == self._pems:
            return False
        first = self._pems is None
        self._pems = pems
        self._pending = configuration(pems)
        if not first:
            self.reloads += 1
            event("gateway.credentials-reloaded", reloads=self.reloads)
        return True
