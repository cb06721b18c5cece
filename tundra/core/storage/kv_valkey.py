"""The production KV store: Valkey (or Redis) through redis-py."""

from __future__ import annotations

import math
from typing import Any

import redis

from tundra.core.errors import StorageUnavailable
from tundra.core.storage.db import redact_url
from tundra.core.storage.kv import KV

# INCR, and set the expiry only when the counter was just created: atomic in one script.
_INCR_WITH_TTL = """
local v = redis.call('INCR', KEYS[1])
if v == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""
_DELETE_IF_EQUALS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    return max(1, round(ttl * 1000))


class ValkeyKV(KV):
    def __init__(self, url: str, *, prefix: str = "tundra:") -> None:
        self.label = redact_url(url)
        self.prefix = prefix
        self._client: Any = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._incr = self._client.register_script(_INCR_WITH_TTL)
        self._del_eq = self._client.register_script(_DELETE_IF_EQUALS)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StorageUnavailable(f"Valkey at {self.label} failed: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        value = self._call(self._client.get, self._k(key))
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self._call(self._client.set, self._k(key), value, px=None if ttl is None else _ms(ttl))

    def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        px = None if ttl is None else _ms(ttl)
        return bool(self._call(self._client.set, self._k(key), value, nx=True, px=px))

    def incr(self, key: str, *, ttl: float) -> int:
        return int(self._call(self._incr, keys=[self._k(key)], args=[_ms(ttl)]))

    def delete(self, key: str) -> bool:
        return bool(self._call(self._client.delete, self._k(key)))

    def delete_if_equals(self, key: str, value: bytes) -> bool:
        return bool(self._call(self._del_eq, keys=[self._k(key)], args=[value]))

    def ttl(self, key: str) -> float | None:
        ms = self._call(self._client.pttl, self._k(key))
        if ms == -2:
            return None
        if ms == -1:
            return math.inf
        return float(ms) / 1000

    def close(self) -> None:
        self._client.close()
