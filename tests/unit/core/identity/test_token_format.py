"""The token format: structure, checksum, env, canonical encoding, and the published regex."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tundra.core.errors import TokenInvalid
from tundra.core.identity import token_format
from tundra.core.identity.token_format import TOKEN_PATTERN, check, display_prefix, generate

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
DOCS = Path(__file__).resolve().parents[4] / "docs" / "tokens.md"


def _decode(secret: str) -> bytes:
    return base64.urlsafe_b64decode(secret + "=")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(env: str, body: bytes, checksum: bytes | None = None) -> str:
    crc = (zlib.crc32(f"tnd_{env}_".encode() + body) & 0xFFFFFFFF).to_bytes(4, "big")
    return f"tnd_{env}_{_encode(body + (crc if checksum is None else checksum))}"


def test_structure_is_28_random_bytes_and_a_big_endian_crc32() -> None:
    token = generate("live")
    assert token.startswith("tnd_live_")
    secret = token.removeprefix("tnd_live_")
    assert len(secret) == 43
    assert "=" not in secret
    raw = _decode(secret)
    assert len(raw) == 32
    expected = zlib.crc32(b"tnd_live_" + raw[:28]).to_bytes(4, "big")
    assert raw[28:] == expected
    check(token, "live")


def test_tokens_are_random() -> None:
    assert len({generate("live") for _ in range(200)}) == 200


@given(st.from_regex(r"[a-z0-9]{1,16}", fullmatch=True))
def test_every_generated_token_matches_the_published_regex(env: str) -> None:
    token = generate(env)
    assert re.fullmatch(TOKEN_PATTERN, token)
    check(token, env)


def test_the_published_regex_is_in_the_docs() -> None:
    assert TOKEN_PATTERN in DOCS.read_text("utf-8")


def test_a_hand_built_token_passes() -> None:
    check(_token("staging", bytes(range(28))), "staging")


GOOD = _token("live", b"\x11" * 28)


@pytest.mark.parametrize("token", [
    "",
    "tnd_live_",
    "tnd__" + GOOD[9:],                       # empty env
    "tnd_" + "a" * 17 + "_" + GOOD[9:],       # env too long
    "tnd_LIVE_" + GOOD[9:],                   # env in capitals
    "tnd-live-" + GOOD[9:],                   # wrong separators
    "TND_live_" + GOOD[9:],
    "live_" + GOOD[9:],                       # no tnd_ prefix
    GOOD[:-1],                                # 42 characters
    GOOD + "A",                               # 44 characters
    GOOD + "=",                               # padding
    GOOD[:-1] + "B",                          # non-canonical: unused bits set
    GOOD[:20] + "+" + GOOD[21:],              # standard base64, not base64url
    GOOD[:20] + "/" + GOOD[21:],
    GOOD[:20] + "é" + GOOD[21:],
    " " + GOOD,
    GOOD + "\n",
    "Bearer " + GOOD,
    GOOD * 2,
    "x" * 10_000,
])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        check(token, "live")
    assert caught.value.reason == "malformed"
    assert str(caught.value) == "the API token is not valid"


def test_non_string_is_malformed() -> None:
    with pytest.raises(TokenInvalid) as caught:
        check(None, "live")  # type: ignore[arg-type]
    assert caught.value.reason == "malformed"


def test_bad_checksum() -> None:
    with pytest.raises(TokenInvalid) as caught:
        check(_token("live", b"\x11" * 28, checksum=b"\x00\x00\x00\x00"), "live")
    assert caught.value.reason == "checksum"


def test_checksum_covers_the_env() -> None:
    # Same bytes, checksum computed for another env, then relabelled: the checksum catches it.
    relabelled = "tnd_live_" + _token("test", b"\x11" * 28)[9:]
    with pytest.raises(TokenInvalid) as caught:
        check(relabelled, "live")
    assert caught.value.reason == "checksum"


def test_wrong_env() -> None:
    with pytest.raises(TokenInvalid) as caught:
        check(generate("test"), "live")
    assert caught.value.reason == "wrong_env"


@given(st.binary(min_size=28, max_size=28), st.data())
def test_any_single_character_change_is_refused(body: bytes, data: st.DataObject) -> None:
    token = _token("live", body)
    check(token, "live")
    position = data.draw(st.integers(min_value=9, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from(B64URL).filter(lambda c: c != token[position]))
    mutated = token[:position] + replacement + token[position + 1:]
    with pytest.raises(TokenInvalid) as caught:
        check(mutated, "live")
    assert caught.value.reason in {"malformed", "checksum"}


@given(st.from_regex(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]", fullmatch=True))
def test_every_secret_the_pattern_admits_is_a_canonical_encoding(secret: str) -> None:
    # What check() relies on to skip a re-encoding: the pattern alone rules out a second
    # spelling of the same bytes.
    raw = _decode(secret)
    assert len(raw) == 32
    assert _encode(raw) == secret


def test_display_prefix() -> None:
    token = generate("staging")
    assert display_prefix(token) == token[: len("tnd_staging_") + 8]
    assert token_format.DISPLAY_SECRET_CHARS == 8
