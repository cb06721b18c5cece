"""``tundra serve`` as a real process on loopback: TLS 1.3 only with the internal CA, strong
key exchange only, the HTTP listener that only redirects, health probes, the API with a real
token over TLS, access logs without secrets, and a graceful SIGTERM that lets a request in
flight finish and exits 0.

Runs on the embedded default (SQLite + embedded KV), which needs no external service; the
group checks use the ``openssl`` command (Debian's openssl package).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tundra.core.audit.actions import Action
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import load_settings
from tundra.core.uow import unit_of_work

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
TLS13_AEAD = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    home: Path
    port: int
    redirect_port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]
    admin: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.home / "tls" / "ca.crt"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def services(self) -> Services:
        return Services(load_settings(environ=self.env))

    def token(self, *scopes: str) -> str:
        svc = self.services()
        try:
            admin = svc.users.get(self.admin).as_principal()
            return svc.tokens.create(admin, name="serve-test", scopes=scopes).plaintext
        finally:
            svc.close()

    def https(self, method: str, path: str, token: str | None = None
              ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(),
                                           timeout=10)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, \
                response.read()
        finally:
            conn.close()


def start(tmp: Path) -> Served:
    home = tmp / "home"
    port, redirect_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TUNDRA_") or k == "TUNDRA_REQUIRE_SERVICES"}
    env.update(TUNDRA_HOME=str(home), TUNDRA_PASSWORD_PROFILE="test",
               TUNDRA_PANEL_LISTEN=f"127.0.0.1:{port}",
               TUNDRA_REDIRECT_LISTEN=f"127.0.0.1:{redirect_port}", TUNDRA_GATEWAY_LISTEN="",
               TUNDRA_PUBLIC_HTTPS_PORT=str(port))
    init = subprocess.run([sys.executable, "-m", "tundra", "init", "--generate-password",
                           "--json"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert init.returncode == 0, init.stderr
    admin = json.loads(init.stdout)["admin"]
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tundra", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    served = Served(home, port, redirect_port, env, log, process, admin)
    deadline = time.monotonic() + 60
    while True:
        try:
            if served.https("GET", "/healthz")[0] == 200:
                return served
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(served)
            raise AssertionError("tundra serve did not come up:\n" + log.read_text("utf-8"))
        time.sleep(0.1)


def stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = start(tmp_path_factory.mktemp("serve"))
    yield running
    stop(running)


def handshake(served: Served, context: ssl.SSLContext, hostname: str = "127.0.0.1"
              ) -> tuple[str | None, Any]:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        return tls.version(), tls.cipher()


def test_tls12_handshake_fails(served: Served) -> None:
    context = served.context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(served, context)


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls13_succeeds_with_the_internal_ca_and_hostname_check(served: Served,
                                                                hostname: str) -> None:
    context = served.context()
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    version, cipher = handshake(served, context, hostname)
    assert version == "TLSv1.3"
    assert cipher[0] in TLS13_AEAD


def test_a_wrong_hostname_or_an_unknown_ca_fails(served: Served) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(served, served.context(), "panel.example.com")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(served, ssl.create_default_context())  # the system store lacks the CA


# Read until the server closes, so the session tickets sent after the handshake are seen too.
REQUEST = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def openssl(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    if binary is None:
        message = "the openssl command is not installed (Debian package openssl)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([binary, "s_client", "-connect", f"127.0.0.1:{served.port}",
                           "-servername", "localhost", "-CAfile", str(served.ca), "-ign_eof",
                           *args], input=REQUEST, capture_output=True, text=True, timeout=20,
                          check=False)


def test_the_key_exchange_group_is_x25519_and_weaker_offers_fail(served: Served) -> None:
    ok = openssl(served, "-tls1_3")
    assert "Server Temp Key: X25519" in ok.stdout, ok.stdout + ok.stderr
    assert "Verify return code: 0 (ok)" in ok.stdout
    assert "HTTP/1.1 200" in ok.stdout
    # No 0-RTT: every session ticket the server issues allows no early data.
    limits = re.findall(r"Max Early Data: (\d+)", ok.stdout)
    assert limits
    assert all(limit == "0" for limit in limits), limits
    for group in ("P-521", "X448", "ffdhe2048"):
        refused = openssl(served, "-tls1_3", "-groups", group)
        assert "Server Temp Key" not in refused.stdout, group
        assert refused.returncode != 0, group


def test_http_redirects_to_https_with_host_path_and_query(served: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.redirect_port, timeout=5)
    try:
        for method in ("GET", "POST"):
            conn.request(method, "/a?q=1")
            response = conn.getresponse()
            response.read()
            assert response.status == 308
            assert response.getheader("Location") == f"https://127.0.0.1:{served.port}/a?q=1"
            assert response.getheader("Set-Cookie") is None
    finally:
        conn.close()


def test_health_probes(served: Served) -> None:
    status, headers, body = served.https("GET", "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert "server" not in headers
    status, _, body = served.https("GET", "/readyz")
    assert status == 200
    assert json.loads(body)["checks"] == {"database": "ok", "kv": "ok"}


def test_an_api_call_with_a_real_token_over_tls(served: Served) -> None:
    token = served.token("servers:read", "audit:read")
    svc = served.services()
    try:
        svc.servers.add(SYSTEM, name="tls-1", address="10.1.0.1")
    finally:
        svc.close()
    status, headers, body = served.https("GET", "/api/v1/servers", token)
    assert status == 200
    assert [s["name"] for s in json.loads(body)["servers"]] == ["tls-1"]
    assert headers["cache-control"] == "no-store"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "access-control-allow-origin" not in headers
    status, headers, body = served.https("GET", "/api/v1/servers", "tnd_live_nope")
    assert status == 401
    assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]
    # The access log names the request, never the token.
    time.sleep(0.2)
    log = served.log.read_text("utf-8")
    assert '"path":"/api/v1/servers"' in log
    assert token not in log
    assert "tnd_live_nope" not in log


def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    served = start(tmp_path)
    try:
        rows = 20_000
        svc = served.services()
        try:
            with unit_of_work(svc.db, SYSTEM) as uow:
                for i in range(rows):
                    uow.record(Action.SERVER_UPDATE, f"server:bulk-{i}", {"i": i, "pad": "x" * 300})
        finally:
            svc.close()
        token = served.token("audit:read")
        svc = served.services()
        try:
            total = svc.audit.head()[0]
        finally:
            svc.close()
        conn = http.client.HTTPSConnection("127.0.0.1", served.port,
                                           context=served.context(), timeout=20)
        conn.request("GET", "/api/v1/audit-log?format=jsonl",
                     headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200
        first = response.read(64 * 1024)  # the export is streaming, far from done
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        assert served.process.poll() is None, "exited with a request in flight"
        rest = response.read()
        conn.close()
        lines = (first + rest).splitlines()
        assert len(lines) == total
        assert json.loads(lines[-1])["seq"] == total
        assert served.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 10
        with pytest.raises(ConnectionRefusedError):
            served.https("GET", "/healthz")
    finally:
        stop(served)
