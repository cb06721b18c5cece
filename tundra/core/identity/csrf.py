"""CSRF tokens for the signed double-submit pattern: an HMAC bound to the session.

``token = "v1." + term + "." + b64url(nonce 16) + "." + b64url(HMAC-SHA256(K, msg))`` with
``msg = "tundra/csrf/v1" NUL binding NUL nonce``, where the binding is the browser's session id
(or, before login, its pre-session id) and ``K = HKDF-SHA256(data key of term,
info="tundra/v1/panel/csrf")``.

Why a keyring data key: it already exists on every instance that shares the database, survives
restarts, is encrypted at rest under the master key, and does not change when the master key is
rotated. The term travels in the token, so tokens stay valid across a data key rotation until
the old term is retired (``min_decrypt_term``); after that a form is refused once and the page
issues a new token. The info string cannot collide with a column key (``tundra/v1/TABLE.COLUMN``:
table names hold no ``/``). See docs/panel.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
import time

from tundra.core.crypto.envelope import hkdf
from tundra.core.crypto.primitives import constant_time_equal, random_bytes
from tundra.core.errors import KeyMaterialError
from tundra.core.services import Services

INFO = b"tundra/v1/panel/csrf"
_DOMAIN = b"tundra/csrf/v1"
NONCE_BYTES = 16
_TOKEN_RE = re.compile(r"v1\.([1-9][0-9]{0,9})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
#: Seconds the active/minimum terms are trusted before they are read again.
TERMS_TTL = 1.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64url, refusing non-canonical text (stray bits in the last
    character), so every token has exactly one accepted spelling."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("non-canonical base64url")
    return data


class CsrfService:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._keys: dict[int, bytes] = {}
        self._terms = (0, 0)
        self._checked = float("-inf")

    def _current_terms(self) -> tuple[int, int]:
        if time.monotonic() - self._checked > TERMS_TTL:
            terms = self._services.keys.refresh_terms()
            with self._lock:
                self._terms, self._checked = terms, time.monotonic()
                for old in [t for t in self._keys if t < terms[1]]:
                    del self._keys[old]
        return self._terms

    def _key(self, term: int) -> bytes:
        key = self._keys.get(term)
        if key is None:
            key = hkdf(self._services.keys.data_key(term), INFO)
            with self._lock:
                self._keys[term] = key
        return key

    @staticmethod
    def _mac(key: bytes, binding: str, nonce: bytes) -> bytes:
        message = _DOMAIN + b"\0" + binding.encode("utf-8") + b"\0" + nonce
        return hmac.new(key, message, hashlib.sha256).digest()

    def issue(self, binding: str) -> str:
        """A new token bound to ``binding`` (the session or pre-session id)."""
        term, _ = self._current_terms()
        nonce = random_bytes(NONCE_BYTES)
        mac = self._mac(self._key(term), binding, nonce)
        return f"v1.{term}.{_b64(nonce)}.{_b64(mac)}"

    def verify(self, binding: str, token: str) -> bool:
        """True only for a well-formed token issued for ``binding`` under a live term."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None or not binding:
            return False
        term = int(match.group(1))
        active, minimum = self._current_terms()
        if not minimum <= term <= active:
            # Perhaps another instance moved the terms within TERMS_TTL: look once more.
            self._checked = float("-inf")
            active, minimum = self._current_terms()
            if not minimum <= term <= active:
                return False
        try:
            nonce, mac = _unb64(match.group(2)), _unb64(match.group(3))
            key = self._key(term)
        except (binascii.Error, ValueError, KeyMaterialError):
            return False
        return constant_time_equal(mac, self._mac(key, binding, nonce))
