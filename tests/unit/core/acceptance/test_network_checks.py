"""NX-01 … NX-03 with real sockets, a real redis-server of our own, and the local PostgreSQL.

Fixtures: listeners this test opens on port 0 (wildcard vs loopback); a redis-server started on
a free port, bound to 0.0.0.0 with protected-mode off and no password (the failing fixture) or
to 127.0.0.1 with a password (the passing one), stopped by its pid; the local PostgreSQL, whose
``trust`` host line is a real NX-03 finding; pg_hba.conf texts for the rule's passing side.
The outside view through network namespaces is in tests/integration/test_network_outside.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import network
from tundra.core.acceptance.checks.network import (
    Listener,
    evaluate_listeners,
    evaluate_outside,
    evaluate_postgres,
    evaluate_valkey,
    parse_pg_hba,
    parse_proc_net_tcp,
    read_listeners,
    run_probe,
)
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Result, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.services import Services
from tundra.core.settings import Settings

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"
ANY = "0.0.0.0"  # noqa: S104 - wildcard listeners are the fixtures here
PG_URL = os.environ.get("TUNDRA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason}; TUNDRA_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def run_check(check_id: str, services: Services, url: str = "https://127.0.0.1:8443") -> Result:
    spec = default_registry(load=False).get(check_id)
    options = RunOptions(url=url, local=True, services=services)
    return runner.run(options, checks=[spec]).by_id()[check_id]


@contextlib.contextmanager
def listening(host: str, family: int = socket.AF_INET) -> Iterator[int]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port(host: str = ANY) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --- a redis-server of our own ----------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    """start(bind, protected_mode, password) -> (port, url): a redis-server killed by its pid."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        unavailable("neither valkey-server nor redis-server is installed")
    started: list[subprocess.Popen[bytes]] = []

    def start(
        *, bind: str, protected_mode: str = "yes", password: str | None = None
    ) -> tuple[int, str]:
        port = free_port()
        argv = [binary or "", "--port", str(port), "--bind", bind]
        argv += ["--protected-mode", protected_mode, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(tmp_path)]
        if password:
            argv += ["--requirepass", password]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on {port} did not start")
            time.sleep(0.02)
        auth = f":{password}@" if password else ""
        return port, f"redis://{auth}127.0.0.1:{port}/0"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


# --- NX-01 ------------------------------------------------------------------------------------

PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 3919 1
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1594 1
   2: 0100007F:1538 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000   101        0 9999 1
"""
_TAIL = "0A 00000000:00000000 00:00000000 00000000"
PROC_TCP6 = "\n".join(
    [
        "  sl  local_address remote_address st",
        f"   0: {'0' * 24}01000000:18EB {'0' * 32}:0000 {_TAIL}     0        0 5067 1",
        f"   1: {'0' * 32}:1CEF {'0' * 32}:0000 {_TAIL}   999        0 7000 1",
    ]
)


def test_proc_net_tcp_rows_are_decoded() -> None:
    if socket.htonl(1) == 1:
        pytest.skip("the sample rows are little-endian")
    v4 = parse_proc_net_tcp(PROC_TCP, family=4)
    assert [(x.address, x.port, x.uid, x.inode, x.scope) for x in v4] == [
        ("127.0.0.1", 5432, 101, 3919, "loopback"),
        (ANY, 2024, 0, 1594, "wildcard"),
    ]
    v6 = parse_proc_net_tcp(PROC_TCP6, family=6)
    assert [(x.label, x.scope) for x in v6] == [
        ("[::1]:6379", "loopback"),
        ("[::]:7407", "wildcard"),
    ]


def test_our_own_listeners_are_found_with_their_process() -> None:
    with (
        listening("127.0.0.1") as loop,
        listening(ANY) as wild,
        listening("::", socket.AF_INET6) as wild6,
    ):
        found = {(x.label): x for x in read_listeners()}
    me = os.getpid()
    assert found[f"127.0.0.1:{loop}"].scope == "loopback"
    assert found[f"0.0.0.0:{wild}"].scope == "wildcard"
    assert found[f"[::]:{wild6}"].scope == "wildcard"
    assert me in [pid for pid, _ in found[f"0.0.0.0:{wild}"].holders]


def baseline_wildcards() -> dict[int, str]:
    """Wildcard listeners this machine already has (not ours to judge in these tests)."""
    return {x.port: "present before the test" for x in read_listeners() if x.scope == "wildcard"}


def test_nx01_passes_when_every_wildcard_is_expected_and_services_are_on_loopback() -> None:
    allowed = baseline_wildcards()
    with listening(ANY) as panel, listening("127.0.0.1") as fake_pg:
        outcome = evaluate_listeners(
            read_listeners(),
            allowed_wildcard={**allowed, panel: f"panel_listen = 0.0.0.0:{panel}"},
            service_ports={fake_pg: "postgresql"},
        )
    assert outcome.status is Status.PASS, outcome.summary
    assert any(s["listen"] == f"127.0.0.1:{fake_pg}" for s in outcome.evidence["service_listeners"])


def test_nx01_fails_on_an_unexpected_wildcard_listener() -> None:
    allowed = baseline_wildcards()
    with listening(ANY) as stray:
        outcome = evaluate_listeners(read_listeners(), allowed_wildcard=allowed, service_ports={})
    assert outcome.status is Status.FAIL
    assert f"unexpected wildcard listener 0.0.0.0:{stray} (held by python" in outcome.summary


def test_nx01_fails_on_a_service_port_off_loopback_even_if_allowed() -> None:
    allowed = baseline_wildcards()
    with listening("::", socket.AF_INET6) as port:
        outcome = evaluate_listeners(
            read_listeners(),
            allowed_wildcard={**allowed, port: "declared"},
            service_ports={port: "valkey"},
        )
    assert outcome.status is Status.FAIL
    assert outcome.summary == f"valkey listens on [::]:{port} (wildcard), not loopback"


def test_a_service_is_recognised_by_its_process_name() -> None:
    listener = Listener(4, "10.0.0.5", 15432, 101, 1, ((77, "postgres"),))
    outcome = evaluate_listeners([listener], allowed_wildcard={}, service_ports={})
    assert outcome.status is Status.FAIL
    assert outcome.summary == "postgresql listens on 10.0.0.5:15432 (address), not loopback"


def test_allowed_ports_come_from_wildcard_settings_and_declarations(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        panel_listen="0.0.0.0:443",
        redirect_listen="127.0.0.1:80",
        gateway_listen="[::]:7447",
    )
    allowed = network.allowed_wildcard_ports(settings, ["0.0.0.0:22", "bogus"])
    assert sorted(allowed) == [22, 443, 7447]  # 80 is configured on loopback: not a wildcard
    assert network.configured_service_ports(
        Settings(home=tmp_path, database_url="postgresql://u@127.0.0.1:6543/x")
    ) == {5432: "postgresql", 6379: "valkey", 6543: "postgresql"}


def test_nx01_through_the_runner_names_a_wildcard_redis(
    services: Services, redis_server: Callable[..., tuple[int, str]]
) -> None:
    port, _ = redis_server(bind=ANY, protected_mode="no")
    result = run_check("NX-01", services)
    assert result.status is Status.FAIL
    assert f"valkey listens on 0.0.0.0:{port} (wildcard), not loopback" in result.summary


def test_nx01_through_the_runner_keeps_a_loopback_redis_out_of_the_problems(
    services: Services, redis_server: Callable[..., tuple[int, str]]
) -> None:
    port, _ = redis_server(bind="127.0.0.1")
    result = run_check("NX-01", services)
    listed = {s["listen"]: s for s in result.evidence["service_listeners"]}
    assert listed[f"127.0.0.1:{port}"]["service"] == "valkey"
    assert not any(str(port) in problem for problem in result.evidence["problems"])
    # Only listeners this test does not control can make it fail (a stray wildcard elsewhere).
    assert all("unexpected wildcard" in p for p in result.evidence["problems"])


# --- NX-02 ------------------------------------------------------------------------------------


def test_the_probe_sees_refused_open_and_pong(redis_server: Callable[..., tuple[int, str]]) -> None:
    open_redis, _ = redis_server(bind="127.0.0.1", protected_mode="no")
    locked_redis, _ = redis_server(bind="127.0.0.1", password=secrets.token_hex(8))
    closed = free_port("127.0.0.1")
    results = run_probe(
        "127.0.0.1", {closed: "postgresql", open_redis: "valkey", locked_redis: "valkey"}
    )
    by_port = {r["port"]: r for r in results}
    assert by_port[closed]["state"] == "refused"
    assert by_port[open_redis]["ping_reply"] == "+PONG"
    assert by_port[locked_redis]["ping_reply"].startswith("-NOAUTH")
    outcome = evaluate_outside({"127.0.0.1": results}, control_port=None)
    assert outcome.status is Status.FAIL
    assert f"127.0.0.1:{open_redis} (valkey) answers PING without authentication" in (
        outcome.summary
    )
    assert f"127.0.0.1:{locked_redis} (valkey) is open from this vantage point" in outcome.summary
    assert f"{closed}" not in outcome.summary


def test_nx02_rule_passes_refused_and_filtered_and_needs_the_control_port() -> None:
    quiet = [
        {"port": 5432, "kind": "postgresql", "state": "refused"},
        {"port": 6379, "kind": "valkey", "state": "filtered"},
    ]
    control_open = [*quiet, {"port": 443, "kind": "control", "state": "open"}]
    assert evaluate_outside({"h": control_open}, control_port=443).status is Status.PASS
    control_closed = [*quiet, {"port": 443, "kind": "control", "state": "filtered"}]
    outcome = evaluate_outside({"h": control_closed}, control_port=443)
    assert outcome.status is Status.ERROR
    assert "the panel port itself is not reachable" in outcome.summary


def _local_address() -> str:
    addresses = [a for a in network.local_addresses() if ":" not in a]
    if not addresses:
        unavailable("this host has no non-loopback IPv4 address to probe")
    return addresses[0]


def test_nx02_from_this_host_fails_on_a_wildcard_redis(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    address = _local_address()
    port, url = redis_server(bind=ANY, protected_mode="no")
    svc = Services(Settings(home=tmp_path, valkey_url=url, password_profile="test"))
    try:
        result = run_check("NX-02", svc)
    finally:
        svc.close()
    assert result.status is Status.FAIL
    assert f"{address}:{port} (valkey) answers PING without authentication" in result.summary
    assert "own non-loopback addresses" in result.evidence["vantage"]


def test_nx02_from_this_host_passes_on_a_loopback_redis(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    address = _local_address()
    port, url = redis_server(bind="127.0.0.1", protected_mode="no")
    svc = Services(Settings(home=tmp_path, valkey_url=url, password_profile="test"))
    try:
        result = run_check("NX-02", svc)
    finally:
        svc.close()
    assert result.status is Status.PASS, result.summary
    states = {r["port"]: r["state"] for r in result.evidence["probes"][address]}
    assert states[port] == "refused"


def test_nx02_refuses_a_loopback_target_with_an_outside_probe() -> None:
    spec = default_registry(load=False).get("NX-02")
    options = RunOptions(url="https://127.0.0.1:8443", outside_probe=("ip", "netns", "exec", "x"))
    result = runner.run(options, checks=[spec]).by_id()["NX-02"]
    assert result.status is Status.ERROR
    assert "is loopback, which an outside probe cannot reach" in result.summary


# --- NX-03 ------------------------------------------------------------------------------------

GOOD_HBA = """\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             postgres                                peer
local   all             all                                     peer
host    tundra          tundra          127.0.0.1/32            scram-sha-256
host    "tundra"        tundra          ::1/128                 scram-sha-256
hostssl tundra,"a,b"    tundra          127.0.0.1 255.255.255.255 scram-sha-256  # a mask column
"""
BAD_HBA = GOOD_HBA + "host    all  all \\\n        0.0.0.0/0    trust\n"


def test_a_scram_only_hba_passes_and_trust_on_a_host_line_fails() -> None:
    good = parse_pg_hba(GOOD_HBA)
    assert [(r.line, r.type, r.method) for r in good] == [
        (2, "local", "peer"),
        (3, "local", "peer"),
        (4, "host", "scram-sha-256"),
        (5, "host", "scram-sha-256"),
        (6, "hostssl", "scram-sha-256"),
    ]
    assert good[4].databases == ("tundra", "a,b")
    assert good[4].netmask == "255.255.255.255"
    assert evaluate_postgres("localhost", good) == []
    bad = parse_pg_hba(BAD_HBA)
    assert bad[-1].line == 7 and bad[-1].address == "0.0.0.0/0"
    assert evaluate_postgres("127.0.0.1", bad) == [
        "pg_hba line 7: host all all 0.0.0.0/0 uses trust (no authentication)"
    ]


def test_local_trust_is_not_a_host_line() -> None:
    rules = parse_pg_hba("local all all trust\n")
    assert evaluate_postgres("", rules) == []


@pytest.mark.parametrize(
    ("listen", "bad"),
    [
        ("localhost", []),
        ("127.0.0.1, ::1", []),
        ("", []),
        ("*", ["*"]),
        (ANY, [ANY]),
        ("localhost,10.1.2.3", ["10.1.2.3"]),
        ("db.example.com", ["db.example.com"]),
    ],
)
def test_listen_addresses(listen: str, bad: list[str]) -> None:
    problems = evaluate_postgres(listen, [])
    assert problems == [f"PostgreSQL listen_addresses includes {b!r} (not loopback)" for b in bad]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"port": "6379", "bind": "127.0.0.1 -::1", "protected_mode": "yes",
             "default_user": "user default on <password hash> ~* &* +@all"},
            [],
        ),
        ({"port": "0", "bind": "", "protected_mode": "yes", "requirepass_set": True}, []),
        (
            {"port": "6379", "bind": "* -::*", "protected_mode": "no",
             "default_user": "user default on nopass ~* &* +@all"},
            [
                "Valkey binds '*' (not loopback)",
                "Valkey binds '::*' (not loopback)",
                "Valkey protected-mode is 'no', not 'yes'",
                "Valkey's default user is enabled without a password (nopass)",
            ],
        ),
        (
            {"port": "6379", "bind": "", "protected_mode": "yes", "requirepass_set": False},
            [
                "Valkey bind is empty: it listens on every interface",
                "Valkey has no requirepass and no ACL for the default user",
            ],
        ),
        ({"default_user": "user default off nopass"}, []),
    ],
)  # fmt: skip
def test_valkey_rules(facts: dict[str, object], expected: list[str]) -> None:
    assert evaluate_valkey(facts) == expected


def test_nx03_against_the_local_postgresql_finds_its_trust_line(pg_schema_url: str) -> None:
    facts = network.postgres_facts(pg_schema_url, timeout=5, local=True)
    if facts.rules is None:
        unavailable(f"the test database user cannot read pg_hba rules: {facts.errors}")
    problems = evaluate_postgres(facts.listen_addresses, facts.rules)
    trust_hosts = [r for r in facts.rules if r.type.startswith("host") and r.method == "trust"]
    if not trust_hosts:
        pytest.skip("this PostgreSQL has no trust host line (the CI image's has one)")
    assert any("uses trust (no authentication)" in p for p in problems)


def test_nx03_through_the_runner_fails_on_postgres_trust_and_an_open_redis(
    tmp_path: Path, pg_schema_url: str, redis_server: Callable[..., tuple[int, str]]
) -> None:
    _, url = redis_server(bind=ANY, protected_mode="no")
    svc = Services(
        Settings(home=tmp_path, database_url=pg_schema_url, valkey_url=url, password_profile="test")
    )
    try:
        result = run_check("NX-03", svc)
    finally:
        svc.close()
    assert result.status is Status.FAIL
    assert "Valkey binds '0.0.0.0' (not loopback)" in result.summary
    assert "Valkey protected-mode is 'no', not 'yes'" in result.summary
    assert "default user is enabled without a password" in result.summary
    assert result.evidence["postgresql"]["listen_addresses"] is not None
    rules = result.evidence["postgresql"]["hba_rules"] or []
    if any(r["type"] == "host" and r["method"] == "trust" for r in rules):
        assert "uses trust (no authentication)" in result.summary


def test_nx03_through_the_runner_passes_on_a_locked_down_redis(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    password = secrets.token_hex(12)
    _, url = redis_server(bind="127.0.0.1", password=password)
    svc = Services(Settings(home=tmp_path, valkey_url=url, password_profile="test"))
    try:
        result = run_check("NX-03", svc)
    finally:
        svc.close()
    assert result.status is Status.PASS, result.summary
    assert result.evidence["valkey"]["requirepass_set"] is True
    assert password not in str(result.evidence)


def test_nx03_skips_with_the_embedded_stores(tmp_path: Path) -> None:
    svc = Services(Settings(home=tmp_path, password_profile="test"))
    try:
        result = run_check("NX-03", svc)
    finally:
        svc.close()
    assert result.status is Status.SKIP
    assert "embedded stores" in result.summary
