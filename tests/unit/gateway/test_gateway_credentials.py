"""CredentialSource: the PEMs are cached, re-read when a watched file changes or the cache is
old, and a change is handed to gRPC exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from tundra.core.pki import x509 as x
from tundra.gateway.credentials import CredentialSource


def material(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_cert = x.generate_ca("test")
    issued = x.issue_server_cert(ca_key, ca_cert, ["localhost"])
    paths = tmp_path / "gw.crt", tmp_path / "gw.key", tmp_path / "ca.pem"
    paths[0].write_bytes(x.cert_to_pem(issued.cert))
    paths[1].write_bytes(x.key_to_pem(issued.key))
    paths[2].write_bytes(x.cert_to_pem(ca_cert))
    return paths


def test_cached_until_a_file_changes(tmp_path: Path) -> None:
    cert, key, ca = material(tmp_path)
    loads: list[int] = []

    def load() -> tuple[bytes, bytes, bytes]:
        loads.append(1)
        return cert.read_bytes(), key.read_bytes(), ca.read_bytes()

    source = CredentialSource(load, lambda: (cert, key, ca), max_age=3600, stat_interval=0)
    assert isinstance(source.initial(), grpc.ServerCertificateConfiguration)
    assert source.fetch() is None
    assert source.fetch() is None
    assert len(loads) == 1
    # A reissue (new inode, new content) is seen at the next handshake, handed over once.
    fresh = tmp_path / "new"
    fresh.mkdir()
    new_cert, new_key, _ = material(fresh)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    assert isinstance(source.fetch(), grpc.ServerCertificateConfiguration)
    assert source.fetch() is None
    assert source.pems[0] == cert.read_bytes()
    assert len(loads) == 2
    assert source.reloads == 1


def test_stat_is_throttled_and_refresh_rereads_when_old(tmp_path: Path) -> None:
    cert, key, ca = material(tmp_path)
    bundle = [ca.read_bytes()]
    loads: list[int] = []

    def load() -> tuple[bytes, bytes, bytes]:
        loads.append(1)
        return cert.read_bytes(), key.read_bytes(), bundle[0]

    source = CredentialSource(load, lambda: (cert, key, ca), max_age=0, stat_interval=3600)
    source.initial()
    os.utime(cert, ns=(1, 1))
    # Within the stat interval nothing is looked at.
    assert source.fetch() is None
    assert len(loads) == 1
    # A retired CA shrinks the bundle without a file change: the periodic refresh finds it.
    bundle[0] = b""
    assert source.refresh() is True
    assert source.ca_bundle == b""
    assert source.fetch() is not None
    # Same material again: a re-read, but nothing new for gRPC.
    assert source.refresh() is False
    assert source.fetch() is None


def test_a_failing_reload_keeps_the_current_material(tmp_path: Path) -> None:
    cert, key, ca = material(tmp_path)
    broken = [False]

    def load() -> tuple[bytes, bytes, bytes]:
        if broken[0]:
            raise OSError("disk gone")
        return cert.read_bytes(), key.read_bytes(), ca.read_bytes()

    source = CredentialSource(load, lambda: (cert, key, ca), stat_interval=0)
    source.initial()
    before = source.pems
    broken[0] = True
    os.utime(cert, ns=(1, 1))
    assert source.fetch() is None
    assert source.pems == before
