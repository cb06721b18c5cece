"""Enrollment, the agent's side: join token → key pair + CSR → certificate, CA bundle, config.

The join token pins the SHA-256 fingerprint of the control plane's active CA. The agent fetches
``URL/agent/v1/ca.pem`` without verification (it has no trust anchor yet), keeps only the
certificate whose fingerprint equals the pin, and sends the token and CSR over TLS verified
against that CA (plus the system store, for a panel behind an operator certificate) with the
host name checked. A pin mismatch stops before the token leaves the host. Every other CA the
agent trusts comes from the EnrollResponse, read over that verified channel.

Standard library HTTP only (http.client + ssl): the agent should not pull in an HTTP stack.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra import __version__
from tundra.agent.config import AgentConfig, split_host_port, write_config
from tundra.agent.state import AgentState, load_certificates, public_key_der
from tundra.agent.v1 import agent_pb2
from tundra.core.crypto.primitives import constant_time_equal
from tundra.core.errors import AgentRefused, ConfigError, InvalidFile, InvalidInput
from tundra.core.pki import x509 as x

#: Content type of both enrollment bodies (see the proto).
PROTOBUF = "application/x-protobuf"
#: A CA bundle or an EnrollResponse is a few kilobytes; anything far larger is not a panel.
MAX_BODY = 1 << 20
_AGENT_ID_RE = re.compile(r"[0-9a-f]{32}")
_REISSUE_HINT = "make a new join token on the control plane: tundra server token NAME"

#: The operator's next step for each refusal reason the panel gives.
REFUSAL_HINTS = {
    "token-malformed": "copy the whole token printed by `tundra server add` / `server token`",
    "token-unknown": _REISSUE_HINT,
    "token-used": "a join token works once; " + _REISSUE_HINT,
    "token-expired": "join tokens last 15 minutes; " + _REISSUE_HINT,
    "ca-mismatch": "the CA was rotated after the token was made; " + _REISSUE_HINT,
    "csr-invalid": "this agent made a request the panel cannot accept: upgrade the agent",
    "csr-names": "this agent made a request the panel cannot accept: upgrade the agent",
}


@dataclass(frozen=True)
class Panel:
    """The panel's base URL, split for http.client."""

    url: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Panel:
        parts = urlsplit(url.strip())
        try:
            port = parts.port or 443
        except ValueError:
            port = -1
        if parts.scheme != "https" or not parts.hostname or port < 1:
            raise InvalidInput(
                f"invalid panel URL {url!r}",
                hint="give the panel's https URL, e.g. --url https://panel.example.net:8443",
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidInput(
                f"invalid panel URL {url!r}: no query, fragment or credentials allowed"
            )
        base = parts.path.rstrip("/")
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(f"https://{netloc}:{port}{base}", parts.hostname, port, base)


@dataclass(frozen=True)
class EnrollResult:
    config: AgentConfig
    config_path: Path
    cert_not_after: datetime
    ca_fingerprints: list[str]
    command_key_ids: list[str]


# -- keys and certificates (also used by the daemon's renewal) ---------------------------------


def new_key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """A fresh P-256 key, its PEM (PKCS#8) and a CSR that asks for no names at all."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return key, key_pem, csr.public_bytes(serialization.Encoding.PEM)


def check_issued(
    cert_pem: bytes, ca_bundle_pem: bytes, *, key: ec.EllipticCurvePrivateKey, agent_id: str
) -> x509.Certificate:
    """The certificate the control plane returned, checked: for our key, our identity, issued
    by a CA of the bundle. A mismatch means a confused or hostile answer; nothing is stored."""
    cert = load_certificates(cert_pem, source="the issued certificate")[0]
    cas = load_certificates(ca_bundle_pem, source="the CA bundle")
    if public_key_der(cert) != public_key_der(key.public_key()):
        raise InvalidFile("the issued certificate is not for this agent's key")
    if x.agent_id_from_cert(cert) != agent_id:
        raise InvalidFile(f"the issued certificate does not name agent {agent_id}")
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return cert
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise InvalidFile("the issued certificate was not signed by a CA of the bundle")


# -- HTTP ----------------------------------------------------------------------------------


def _request(
    panel: Panel,
    path: str,
    *,
    context: ssl.SSLContext,
    timeout: float,
    body: bytes | None = None,
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPSConnection(panel.host, panel.port, context=context, timeout=timeout)
    headers = {"User-Agent": f"tundra-agent/{__version__}", "Accept": PROTOBUF}
    if body is not None:
        headers["Content-Type"] = PROTOBUF
    try:
        conn.request("POST" if body is not None else "GET", panel.base_path + path, body, headers)
        response = conn.getresponse()
        data = response.read(MAX_BODY + 1)
        content_type = response.getheader("Content-Type", "") or ""
        return response.status, content_type, data
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"the panel at {panel.url} presented a certificate that does not verify: "
            f"{exc.verify_message}",
            hint="use the host name the panel's certificate names (panel_hostnames), or "
            "--ca-file for an operator certificate from a private CA",
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigError(
            f"cannot reach the panel at {panel.url}: {exc}",
            hint="check --url and that `tundra serve` runs and is reachable from this host",
        ) from None
    finally:
        conn.close()


def _refusal(panel: Panel, status: int, content_type: str, data: bytes) -> Exception:
    message, reason = data[:300].decode("utf-8", "replace").strip(), ""
    if "json" in content_type:
        try:
            error = json.loads(data)["error"]
            message = str(error.get("message", message))
            reason = str(error.get("reason", "") or "")
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    if not reason:
        reason = next((r for r in REFUSAL_HINTS if r in message), "")
    if status == 404:
        return ConfigError(
            f"{panel.url} has no agent enrollment endpoint (HTTP 404)",
            hint="check --url: it is the panel's base URL, e.g. https://panel.example.net:8443",
        )
    if status in (401, 403, 409, 410, 422):
        return AgentRefused(
            f"the panel refused the enrollment: {message or f'HTTP {status}'}",
            reason=reason or "refused",
            hint=REFUSAL_HINTS.get(reason),
        )
    if status == 429:
        return AgentRefused(
            f"the panel is throttling enrollments: {message}",
            reason="throttled",
            hint="wait a minute and try again",
        )
    return ConfigError(f"the panel answered HTTP {status} to the enrollment: {message}")


def fetch_pinned_ca(
    panel: Panel, pin: str, *, timeout: float
) -> tuple[x509.Certificate, list[str]]:
    """The CA whose fingerprint is ``pin`` from the panel's unauthenticated CA endpoint."""
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Unverified on purpose: what comes back is trusted only if it matches the token's pin.
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    status, _, data = _request(panel, "/agent/v1/ca.pem", context=insecure, timeout=timeout)
    if status != 200 or len(data) > MAX_BODY:
        raise ConfigError(
            f"{panel.url}/agent/v1/ca.pem answered HTTP {status}, not a CA bundle",
            hint="check --url: it is the panel's base URL, e.g. https://panel.example.net:8443",
        )
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{panel.url}/agent/v1/ca.pem did not return a PEM certificate")
    prints = [x.fingerprint(c) for c in certs]
    # Compare against every entry (no early exit) so timing says nothing about which matched.
    matches = [constant_time_equal(p, pin.lower()) for p in prints]
    if not any(matches):
        raise AgentRefused(
            f"the panel's CA (SHA-256 {', '.join(p[:16] + '…' for p in prints)}) does not "
            f"match the join token's pin ({pin[:16]}…); nothing was sent",
            reason="ca-pin-mismatch",
            hint="check that --url is your Tundra panel; if its CA was rotated since the token "
            "was made, " + _REISSUE_HINT,
        )
    return certs[matches.index(True)], prints


def verified_context(pinned: x509.Certificate, *, ca_file: Path | None) -> ssl.SSLContext:
    """Trust the pinned CA, the system store and ``ca_file``; check the host name."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(
        cadata=pinned.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidFile(f"cannot load --ca-file {ca_file}: {exc}") from None
    return context


# -- the whole flow ------------------------------------------------------------------------


def _preflight(config_path: Path, state: AgentState) -> None:
    """Fail before the one-time token is spent when the results could not be stored."""
    state.prepare()
    parent = config_path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK) or (
        config_path.exists() and not os.access(config_path, os.W_OK)
    ):
        raise ConfigError(
            f"cannot write the agent configuration {config_path}",
            hint="run as root, or pass --config to a path you can write",
        )


def enroll(
    *,
    url: str,
    token: str,
    config_path: Path,
    state_dir: Path,
    ca_file: Path | None = None,
    timeout: float = 30.0,
) -> EnrollResult:
    """Enroll this host and write its state and configuration (see the module docstring)."""
    from tundra.core.agents.enrollment import parse_join_token

    panel = Panel.parse(url)
    token = token.strip()
    _, pin = parse_join_token(token)
    state = AgentState(state_dir)
    _preflight(config_path, state)
    pinned, _ = fetch_pinned_ca(panel, pin, timeout=timeout)

    key, key_pem, csr_pem = new_key_and_csr()
    request = agent_pb2.EnrollRequest(
        join_token=token,
        csr_pem=csr_pem,
        agent_version=__version__,
        hostname=socket.gethostname(),
    )
    status, content_type, data = _request(
        panel,
        "/agent/v1/enroll",
        context=verified_context(pinned, ca_file=ca_file),
        timeout=timeout,
        body=request.SerializeToString(),
    )
    if status != 200:
        raise _refusal(panel, status, content_type, data)
    try:
        response = agent_pb2.EnrollResponse.FromString(data)
    except Exception:  # protobuf's DecodeError
        raise ConfigError(f"{panel.url} did not answer with an EnrollResponse") from None
    return _store(
        response,
        key=key,
        key_pem=key_pem,
        pinned=pinned,
        panel=panel,
        state=state,
        config_path=config_path,
    )


def _store(
    response: agent_pb2.EnrollResponse,
    *,
    key: ec.EllipticCurvePrivateKey,
    key_pem: bytes,
    pinned: x509.Certificate,
    panel: Panel,
    state: AgentState,
    config_path: Path,
) -> EnrollResult:
    from tundra.core.agents.envelope import key_id_for

    if not _AGENT_ID_RE.fullmatch(response.agent_id):
        raise InvalidFile("the panel's answer has no valid agent id")
    cert = check_issued(
        response.certificate_pem, response.ca_bundle_pem, key=key, agent_id=response.agent_id
    )
    ca_prints = [
        x.fingerprint(c) for c in load_certificates(response.ca_bundle_pem, source="CA bundle")
    ]
    if x.fingerprint(pinned) not in ca_prints:
        raise InvalidFile("the panel's CA bundle does not contain the CA the token pins")
    try:
        split_host_port(response.gateway_address)
    except ValueError as exc:
        raise InvalidFile(f"the panel's gateway address is not usable: {exc}") from None
    keys = {k.key_id: bytes(k.public_key) for k in response.command_keys}
    if not keys or any(len(raw) != 32 or key_id_for(raw) != key_id for key_id, raw in keys.items()):
        raise InvalidFile("the panel's command keys are missing or malformed")

    state.store_credentials(key_pem=key_pem, cert_pem=response.certificate_pem)
    state.store_ca_bundle(response.ca_bundle_pem)
    state.store_command_keys(keys)
    config = AgentConfig(
        agent_id=response.agent_id,
        server_name=response.server_name,
        gateway=response.gateway_address,
        panel_url=panel.url,
        state_dir=state.dir.absolute(),
    )
    try:
        write_config(config, config_path)
    except OSError as exc:
        raise ConfigError(
            f"enrolled, but cannot write {config_path}: {exc.strerror}",
            hint="the token is spent: fix the path, then " + _REISSUE_HINT,
        ) from None
    return EnrollResult(
        config=config,
        config_path=config_path,
        cert_not_after=cert.not_valid_after_utc,
        ca_fingerprints=ca_prints,
        command_key_ids=sorted(keys),
    )
