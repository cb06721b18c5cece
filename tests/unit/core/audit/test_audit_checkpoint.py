"""Signed checkpoints: C2SP signed-note interop, strict parsing, keys outside the database."""

from __future__ import annotations

import base64
import stat

import pytest
from audithelpers import write_rows

from tundra.core.audit.checkpoint import (
    Checkpoint,
    SignerKey,
    VerifierKey,
    generate_signer,
    key_id,
    open_note,
    parse_checkpoint,
    sign_checkpoint,
    sign_note,
)
from tundra.core.errors import ConfigError, InvalidFile

# The example keys and note of golang.org/x/mod/sumdb/note (example_test.go): the reference
# implementation of the C2SP signed-note format.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + ("\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFY"
                     "C2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


def test_keys_and_signatures_match_the_go_reference() -> None:
    signer = SignerKey.parse(GO_SKEY)
    assert signer.encode().strip() == GO_SKEY
    assert signer.public().encode() == GO_VKEY
    assert sign_note(GO_TEXT, signer) == GO_NOTE
    assert open_note(GO_NOTE, VerifierKey.parse(GO_VKEY)) == GO_TEXT


def test_key_id_is_the_c2sp_ed25519_rule() -> None:
    vkey = VerifierKey.parse(GO_VKEY)
    import hashlib

    expected = hashlib.sha256(b"PeterNeumann\n\x01" + vkey.public).digest()[:4]
    assert key_id("PeterNeumann", vkey.public) == expected == bytes.fromhex("c74f20a3")


def _checkpoint_note() -> tuple[str, SignerKey]:
    signer = generate_signer("example.org/tundra-audit/0001")
    note = sign_checkpoint(Checkpoint(signer.name, 42, "ab" * 32), signer)
    return note, signer


def test_checkpoint_round_trip_and_layout() -> None:
    note, signer = _checkpoint_note()
    lines = note.split("\n")
    assert lines[:3] == [signer.name, "42", base64.b64encode(bytes.fromhex("ab" * 32)).decode()]
    assert lines[3] == ""
    assert lines[4].startswith(f"— {signer.name} ")
    parsed = parse_checkpoint(note, signer.public())
    assert parsed == Checkpoint(signer.name, 42, "ab" * 32)


def test_a_witness_signature_by_another_key_is_ignored() -> None:
    note, signer = _checkpoint_note()
    witness = generate_signer("witness.example")
    cosigned = note + sign_note(note.split("\n\n")[0] + "\n", witness).split("\n\n")[1]
    assert parse_checkpoint(cosigned, signer.public()).seq == 42


def _tampered(note: str) -> list[str]:
    body, sigs = note.split("\n\n")
    origin, size, root = body.split("\n")
    other_root = base64.b64encode(bytes(32)).decode()
    return [
        f"{origin}\n43\n{root}\n\n{sigs}",                      # a different size
        f"{origin}\n{size}\n{other_root}\n\n{sigs}",            # a different hash
        body + "\n",                                            # no signature
        note.replace("— ", "-- "),                              # not the em dash
        note.replace("\n", "\r\n"),                             # CRLF
        note[:-1],                                              # no final newline
        f"{origin}\n042\n{root}\n\n{sigs}",                     # leading zero
        f"{origin}\n{size}\n{root[:-4]}\n\n{sigs}",             # short hash
        f"{origin}\n{size}\n\n{root}\n\n{sigs}",                # blank line in the body
        note.replace(sigs.split(" ")[-1], "!!notbase64!!\n"),   # signature not base64
        "",
    ]


@pytest.mark.parametrize("index", range(11))
def test_tampered_or_malformed_checkpoints_are_invalid_files(index: int) -> None:
    note, signer = _checkpoint_note()
    with pytest.raises(InvalidFile):
        parse_checkpoint(_tampered(note)[index], signer.public())


def test_a_checkpoint_from_another_key_is_refused() -> None:
    note, _ = _checkpoint_note()
    stranger = generate_signer("example.org/tundra-audit/0001")  # same name, other key
    with pytest.raises(InvalidFile, match="not signed by"):
        parse_checkpoint(note, stranger.public())


@pytest.mark.parametrize("text", ["", "name+c74f20a3", "name+zzzz0000+AAAA", "a b+c74f20a3+AA",
                                  GO_VKEY.replace("c74f20a3", "c74f20a4"),
                                  GO_VKEY[:-4] + "AAAA"])
def test_malformed_verifier_keys_are_invalid(text: str) -> None:
    with pytest.raises(InvalidFile):
        VerifierKey.parse(text)


def test_ensure_key_creates_files_outside_the_database_once(audit_services) -> None:
    settings = audit_services.settings
    key, vkey = settings.checkpoint_key_path, settings.checkpoint_vkey_path
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE(vkey.stat().st_mode) == 0o644
    assert SignerKey.parse(key.read_text()).public() == VerifierKey.parse(vkey.read_text())
    before = key.read_bytes()
    assert audit_services.audit.ensure_checkpoint_key() is False
    assert key.read_bytes() == before
    vkey.unlink()  # the public half is re-derived, the secret half never replaced
    assert audit_services.audit.ensure_checkpoint_key() is False
    assert VerifierKey.parse(vkey.read_text()) == SignerKey.parse(before.decode()).public()


def test_checkpoint_signs_the_head_and_verifies(audit_services) -> None:
    write_rows(audit_services, 5)
    path = audit_services.audit.checkpoint()
    assert path == audit_services.settings.checkpoints_dir / "5.note"
    parsed = audit_services.audit.read_checkpoint(path)
    assert (parsed.seq, parsed.head_hash) == audit_services.audit.head()
    result = audit_services.audit.verify(checkpoint=path)
    assert result.ok
    assert result.checkpoint_seq == 5


def test_checkpoint_of_an_empty_log(audit_services, tmp_path) -> None:
    path = audit_services.audit.checkpoint(out=tmp_path / "empty.note")
    assert audit_services.audit.read_checkpoint(path).seq == 0
    assert audit_services.audit.verify(checkpoint=path).ok


def test_a_signing_key_with_a_loose_mode_is_refused(audit_services) -> None:
    import os

    os.chmod(audit_services.settings.checkpoint_key_path, 0o644)
    with pytest.raises(ConfigError, match="mode"):
        audit_services.audit.checkpoint()


def test_verify_with_an_explicit_vkey_and_a_wrong_one(audit_services, tmp_path) -> None:
    write_rows(audit_services, 2)
    path = audit_services.audit.checkpoint()
    mine = tmp_path / "mine.vkey"
    mine.write_text(audit_services.settings.checkpoint_vkey_path.read_text())
    assert audit_services.audit.verify(checkpoint=path, vkey=mine).ok
    other = tmp_path / "other.vkey"
    other.write_text(generate_signer().public().encode())
    with pytest.raises(InvalidFile, match="not signed by"):
        audit_services.audit.verify(checkpoint=path, vkey=other)


DOCS_NOTE = (
    "web1.example.org/tundra-audit/5f1c2a9e\n3\nqaY0afeKQYYkDPeNPU5c9e/ygekuzCQDKowuRXwNusg=\n\n"
    "— web1.example.org/tundra-audit/5f1c2a9e PN4t0SIc/KbAwZoJ3jt/NQBoizzwPN8qpjUKaQ463AxCV52W9y"
    "lmrcOrgBTJsNBIImjNtZlynXXwClPN17ywT8bo9wE=\n"
)
DOCS_VKEY = ("web1.example.org/tundra-audit/5f1c2a9e+3cde2dd1+"
             "AXvvmPkmgaNoADyHueD/IWdx1YeN+ZJkh+HYmHN2v1e3")


def test_the_documented_example_checkpoint_verifies() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[4] / "docs" / "audit.md").read_text()
    assert DOCS_NOTE in docs
    assert DOCS_VKEY in docs
    parsed = parse_checkpoint(DOCS_NOTE, VerifierKey.parse(DOCS_VKEY))
    # The head of the golden chain in test_audit_chain.py.
    assert (parsed.seq, parsed.head_hash) == (
        3, "a9a63469f78a4186240cf78d3d4e5cf5eff281e92ecc24032a8c2e457c0dbac8")
