"""TR-01 … TR-06 against well-configured and misconfigured local HTTPS servers, and against the
real panel (``create_app`` under uvicorn with ``tundra.panel.tls.server_context``), which must
pass its own checks.

The misconfigured servers are Python ``ssl`` servers (TLS 1.0/1.2 allowed, P-521 only, bad
certificates, bad HSTS) and, for what Python cannot serve (0-RTT tickets, CCM suites),
``openssl s_server`` (Debian's openssl package; without it those tests skip with the reason, a
failure under ``TUNDRA_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from httpsfixtures import (
    HSTS,
    Issued,
    Pki,
    RealPanel,
    SiteProfile,
    headers_with,
    http_redirector,
    https_site,
    openssl_binary,
    openssl_server,
    real_panel,
    tls_server_context,
)

from tundra.core.acceptance.checks import transport
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Status

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
Check = Callable[[RunContext], Outcome]


def run(
    check: Check,
    url: str,
    *,
    ca: Path | None = None,
    http_port: int | None = None,
    io_timeout: float = 3.0,
) -> Outcome:
    options = RunOptions(url=url, ca_file=ca, http_port=http_port, io_timeout=io_timeout)
    return check(RunContext(options))


def need_openssl() -> None:
    if openssl_binary() is None:
        reason = "the openssl command is not installed (Debian package openssl)"
        if REQUIRE:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def good_cert(pki: Pki) -> Issued:
    return pki.issue("good")


@pytest.fixture(scope="module")
def good_site(good_cert: Issued) -> Iterator[str]:
    with https_site(tls_server_context(good_cert)) as site:
        yield site.url


def site_with(issued: Issued, profile: SiteProfile | None = None, **context: Any) -> Any:
    return https_site(tls_server_context(issued, **context), profile or SiteProfile())


# --- TR-01 -------------------------------------------------------------------------------------


def test_tr01_passes_with_a_308_to_the_same_url(good_site: str, good_cert: Issued) -> None:
    port = int(good_site.rsplit(":", 1)[1])
    with http_redirector(port) as http_port:
        outcome = run(transport.http_redirects, good_site, http_port=http_port)
    assert outcome.status is Status.PASS, outcome
    locations = [p["location"] for p in outcome.evidence["probes"]]
    assert locations == [f"{good_site}/", f"{good_site}/a/path?q=1"]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ({"status": 302}, "status 302, not 301/308"),
        ({"host": "evil.example"}, "Location 'https://evil.example"),
        ({"keep_query": False}, "Location 'https://127.0.0.1:"),
        ({"cookie": True}, "sets a cookie over plain http"),
        ({"via_http": True}, "Location 'http://127.0.0.1:"),
    ],
)
def test_tr01_fails_on_each_broken_redirect(
    good_site: str, broken: dict[str, Any], expected: str
) -> None:
    port = int(good_site.rsplit(":", 1)[1])
    with http_redirector(port, **broken) as http_port:
        outcome = run(transport.http_redirects, good_site, http_port=http_port)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


def test_tr01_fails_when_nothing_listens_on_http(good_site: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    outcome = run(transport.http_redirects, good_site, http_port=closed)
    assert outcome.status is Status.FAIL
    assert "nothing answers" in outcome.summary


# --- TR-02 -------------------------------------------------------------------------------------


def test_tr02_passes_on_tls13_only_and_says_the_client_could_offer_old_versions(
    good_site: str,
) -> None:
    outcome = run(transport.tls_versions, good_site)
    assert outcome.status is Status.PASS, outcome
    old = outcome.evidence["old_versions"]
    for version in ("TLSv1", "TLSv1.1", "TLSv1.2"):
        assert old[version]["accepted"] is False
        # This OpenSSL can offer them at security level 0: the refusal is the server's.
        assert old[version]["ssl"]["client_could_offer"] is True
        assert old[version]["raw_client_hello"] == {"answer": "alert", "alert": "protocol_version"}
    assert outcome.evidence["tls13"]["version"] == "TLSv1.3"


def test_tr02_fails_when_tls12_is_accepted(good_cert: Issued) -> None:
    with site_with(good_cert, minimum=ssl.TLSVersion.TLSv1_2) as site:
        outcome = run(transport.tls_versions, site.url)
    assert outcome.status is Status.FAIL
    assert outcome.summary == "accepted: TLSv1.2"


def test_tr02_fails_when_tls10_is_accepted(good_cert: Issued) -> None:
    with site_with(good_cert, minimum=ssl.TLSVersion.TLSv1, seclevel0=True) as site:
        outcome = run(transport.tls_versions, site.url)
    assert outcome.status is Status.FAIL
    assert outcome.summary == "accepted: TLSv1, TLSv1.1, TLSv1.2"
    tls10 = outcome.evidence["old_versions"]["TLSv1"]
    assert tls10["ssl"]["version"] == "TLSv1"
    assert tls10["raw_client_hello"]["version"] == "TLSv1"


def test_the_hand_written_hello_sees_tls10_without_the_local_openssl(good_cert: Issued) -> None:
    # What TR-02 relies on when this OpenSSL cannot offer TLS 1.0 at all.
    hello = transport.client_hello("127.0.0.1", version=0x0301)
    with site_with(good_cert, minimum=ssl.TLSVersion.TLSv1, seclevel0=True) as site:
        answer = transport.raw_hello(site.host, site.port, hello)
    assert answer.kind == "server_hello"
    assert answer.hello is not None and answer.hello.version == 0x0301


def test_tr02_errors_when_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    outcome = run(transport.tls_versions, f"https://127.0.0.1:{closed}")
    assert outcome.status is Status.ERROR
    assert "cannot reach" in outcome.summary


# --- TR-03 -------------------------------------------------------------------------------------


def test_tr03_passes_with_aead_suites_and_x25519(good_site: str) -> None:
    outcome = run(transport.suites_and_groups, good_site)
    assert outcome.status is Status.PASS, outcome
    groups = outcome.evidence["groups"]
    assert groups["x25519"]["accepted"] is True
    assert groups["x25519"]["negotiated"] == "x25519"
    for name in ("secp521r1", "x448", "ffdhe2048"):
        assert groups[name]["accepted"] is False
        assert groups[name]["client_could_offer"] is True
    suites = outcome.evidence["tls13_suites"]
    assert suites["TLS_AES_128_CCM_SHA256"]["accepted"] is False
    assert any(suites[name]["accepted"] for name in transport.ALLOWED_SUITES.values())


@pytest.mark.parametrize(
    ("group", "iana"), [("secp521r1", "secp521r1"), ("X448", "x448"), ("ffdhe2048", "ffdhe2048")]
)
def test_tr03_fails_on_a_server_limited_to_a_weaker_group(
    good_cert: Issued, group: str, iana: str
) -> None:
    with site_with(good_cert, group=group) as site:
        outcome = run(transport.suites_and_groups, site.url)
    assert outcome.status is Status.FAIL
    assert f"group {iana} accepted" in outcome.summary
    assert "none of X25519, P-256, P-384 is accepted" in outcome.summary
    assert outcome.evidence["groups"][iana]["negotiated"] == iana


def test_tr03_fails_when_tls12_suites_are_negotiable(good_cert: Issued) -> None:
    with site_with(good_cert, minimum=ssl.TLSVersion.TLSv1_2) as site:
        outcome = run(transport.suites_and_groups, site.url)
    assert outcome.status is Status.FAIL
    assert outcome.summary == "TLS 1.2 suites are negotiable (see TR-02)"


def test_tr03_fails_on_a_ccm_suite(good_cert: Issued) -> None:
    need_openssl()
    suites = "TLS_AES_128_CCM_SHA256:TLS_AES_128_GCM_SHA256"
    with openssl_server(good_cert, "-tls1_3", "-ciphersuites", suites, "-groups", "X25519") as port:
        outcome = run(transport.suites_and_groups, f"https://127.0.0.1:{port}")
    assert outcome.status is Status.FAIL
    assert outcome.summary == "TLS_AES_128_CCM_SHA256 accepted"


# --- TR-04 -------------------------------------------------------------------------------------


def test_tr04_passes_on_a_good_certificate(good_site: str, good_cert: Issued) -> None:
    outcome = run(transport.certificate, good_site, ca=good_cert.ca)
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["verified"] is True
    assert outcome.evidence["warning"] is None
    assert outcome.evidence["chain_source"].startswith("Certificate handshake message")
    leaf = outcome.evidence["chain"][0]
    assert (leaf["key"], leaf["key_bits"], leaf["signature_hash"]) == (
        "EC secp256r1",
        256,
        "sha256",
    )


def test_tr04_passes_with_a_warning_under_30_days(pki: Pki) -> None:
    issued = pki.issue("soon", days_left=20)
    with site_with(issued) as site:
        outcome = run(transport.certificate, site.url, ca=issued.ca)
    assert outcome.status is Status.PASS
    assert "WARNING: the certificate expires in " in outcome.summary
    assert outcome.summary.endswith("days (< 30)")
    assert outcome.evidence["warning"].startswith("the certificate expires in")


@pytest.mark.parametrize(
    ("name", "issue", "expected"),
    [
        ("expired", {"expired": True}, "certificate has expired"),
        ("short", {"days_left": 10}, "days left (< 14)"),
        ("rsa1024", {"key": "rsa1024"}, "leaf: RSA key of 1024 bits (< 2048)"),
        ("sha1", {"sha1": True}, "leaf: signed with SHA1"),
        ("wronghost", {"hosts": ("other.example",)}, "IP address mismatch"),
        ("sha1mid", {"intermediate_sha1": True}, "chain[1]: signed with SHA1"),
    ],
)
def test_tr04_fails_on_each_bad_certificate(
    pki: Pki, name: str, issue: dict[str, Any], expected: str
) -> None:
    issued = pki.issue(name, **issue)
    with site_with(issued, seclevel0=True) as site:
        outcome = run(transport.certificate, site.url, ca=issued.ca)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary
    assert outcome.evidence["chain"], "the chain is inspected even when it does not verify"


def test_tr04_reads_the_whole_presented_chain(pki: Pki) -> None:
    issued = pki.issue("chained", intermediate_sha1=False)
    with site_with(issued) as site:
        outcome = run(transport.certificate, site.url, ca=issued.ca)
    assert outcome.status is Status.PASS, outcome
    chain = outcome.evidence["chain"]
    assert [c["subject"] for c in chain] == ["CN=127.0.0.1", "CN=chained issuing CA"]


def test_tr04_fails_on_an_unknown_ca(good_site: str) -> None:
    outcome = run(transport.certificate, good_site)  # the system store lacks the test CA
    assert outcome.status is Status.FAIL
    assert "unable to get local issuer certificate" in outcome.summary
    assert outcome.evidence["trust"] == "system store"


# --- TR-05 -------------------------------------------------------------------------------------


def test_tr05_passes_when_no_ticket_allows_early_data(good_site: str) -> None:
    outcome = run(transport.no_early_data, good_site)
    assert outcome.status is Status.PASS, outcome
    # Python's server issues tickets (without early data): they were observed, not assumed.
    tickets = outcome.evidence["session_tickets"]
    assert tickets
    assert all(t["max_early_data"] == 0 for t in tickets)
    assert outcome.evidence["handshake"]["compression"] is None
    assert outcome.evidence["tls12_deflate_offer"]["answer"] == "alert"


def test_tr05_fails_on_a_server_offering_0rtt(good_cert: Issued) -> None:
    need_openssl()
    # s_server cannot answer HTTP with -early_data: the read after the request times out.
    with openssl_server(good_cert, "-tls1_3", "-early_data", www=False) as port:
        outcome = run(transport.no_early_data, f"https://127.0.0.1:{port}", io_timeout=1.0)
    assert outcome.status is Status.FAIL
    assert "session tickets allow 0-RTT early data (max_early_data [16384])" in outcome.summary


# --- TR-06 -------------------------------------------------------------------------------------


def test_tr06_passes_on_every_kind_of_response(good_site: str, good_cert: Issued) -> None:
    outcome = run(transport.hsts_everywhere, good_site, ca=good_cert.ca)
    assert outcome.status is Status.PASS, outcome
    assert outcome.evidence["kinds_not_observed"] == []
    assert {"2xx", "redirect", "401", "404"} <= set(outcome.evidence["kinds_sampled"])


def _headers_with(hsts: list[str]) -> tuple[tuple[str, str], ...]:
    return headers_with("Strict-Transport-Security", *hsts)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (SiteProfile(headers=_headers_with(["max-age=15552000; includeSubDomains"])),
         "max-age 15552000 < 31536000"),
        (SiteProfile(headers=_headers_with(["max-age=63072000"])), "no includeSubDomains"),
        (SiteProfile(headers=_headers_with([HSTS, HSTS])),
         "2 Strict-Transport-Security headers"),
        (SiteProfile(headers=_headers_with(["max-age=63072000abc; includeSubDomains"])),
         "max-age is not max-age=<integer>"),
        (SiteProfile(headers=_headers_with(["max-age=63072000; max-age=1; includeSubDomains"])),
         "directive max-age repeated"),
        (SiteProfile(strip_on_status={404: ("Strict-Transport-Security",)}),
         "(404): 0 Strict-Transport-Security headers"),
        (SiteProfile(strip_on_status={303: ("Strict-Transport-Security",)}),
         "/ (303): 0 Strict-Transport-Security headers"),
    ],
)  # fmt: skip
def test_tr06_fails_on_each_bad_hsts(
    good_cert: Issued, profile: SiteProfile, expected: str
) -> None:
    with site_with(good_cert, profile) as site:
        outcome = run(transport.hsts_everywhere, site.url, ca=good_cert.ca)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


def test_the_hsts_parser_is_strict() -> None:
    assert transport.parse_hsts('max-age="31536000"; includeSubDomains; preload') == (
        31536000,
        True,
        [],
    )
    assert transport.parse_hsts("max-age = 31536000; includeSubDomains")[2] == [
        "max-age is not max-age=<integer>: 'max-age = 31536000'"
    ]
    assert "no max-age" in transport.parse_hsts("includeSubDomains")[2]


# --- the real panel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealPanel]:
    from tundra.core.home import initialize
    from tundra.core.services import Services
    from tundra.core.settings import Settings

    home = tmp_path_factory.mktemp("panel") / "home"
    services = Services(Settings(home=home, database_url="", password_profile="test"))
    try:
        initialize(services, admin_name="admin", admin_password="correct horse battery staple")
        with real_panel(services) as running:
            yield running
    finally:
        services.close()


@pytest.mark.parametrize(
    "check",
    [
        transport.http_redirects,
        transport.tls_versions,
        transport.suites_and_groups,
        transport.certificate,
        transport.no_early_data,
        transport.hsts_everywhere,
    ],
)
def test_the_real_panel_passes_every_transport_check(panel: RealPanel, check: Check) -> None:
    outcome = run(check, panel.url, ca=panel.ca, http_port=panel.http_port)
    assert outcome.status is Status.PASS, (outcome.summary, outcome.evidence)
