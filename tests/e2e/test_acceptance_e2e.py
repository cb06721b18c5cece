"""``tundra acceptance run --local`` end to end over a real deployment, every part a process.

The deployment (``acceptancedeploy.deployment``): ``tundra init``, an acceptance account made by
``tundra user add --acceptance``, ``tundra serve`` on the embedded SQLite database and KV store,
a server whose agent is enrolled (``tundra agent enroll``) and connected (``tundra agent run``),
and a second enrolled agent identity that the runner uses as ``--agent-cert/--agent-key``
(AG-06 takes over its session). An outside host is a network namespace joined by a veth pair
(``netnshelpers``; indexes 40–49 are this file's); the panel and its redirect listener listen
on this host's side of that pair, the gateway on 0.0.0.0, so the namespace can reach both, and
the agents, dialling that address, connect *from* it (their servers are registered with it).

The panel listens on the veth address rather than on 127.0.0.1 on purpose: NX-02 probes the
``--url`` host from the ``--outside-probe`` vantage point, and a loopback target is one an
outside probe cannot reach, so NX-02 rightly reports such a run as inconclusive (error).

This host runs services of its own (PostgreSQL and Valkey on loopback, which NX-01 inspects
and accepts, and a wildcard listener that is not tundra's): the run is given, with
``--allow-listener``, exactly the wildcard listeners that existed before the test started
anything, read from ``/proc/net/tcp{,6}``.

1. The sound deployment: exit 0; every check of the catalogue passes, except the skips listed
   in :data:`JUSTIFIED_SKIPS` with their reasons.
2. The same deployment weakened four ways at once: exit 1, and the failing checks are exactly
   the ones each weakening must break (:data:`WEAKENINGS`).

Root only (namespaces); ``TUNDRA_REQUIRE_SERVICES=1`` turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from acceptancedeploy import (
    deployment,
    free_port,
    run_acceptance,
    weak_proxy,
    wide_open_redis,
    wildcard_listeners,
)

# The namespace helper lives with the integration tests (no packages under tests/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from netnshelpers import REQUIRE, outside_host

from tundra.core.acceptance.registry import current
from tundra.core.acceptance.reporters import json as json_reporter

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: The catalogue (../shared/design/ACCEPTANCE.md): the registry must hold exactly these.
CATALOGUE = (
    *(f"TR-0{n}" for n in range(1, 7)),
    *(f"HD-0{n}" for n in range(1, 7)),
    *(f"ID-0{n}" for n in range(1, 9)),
    *(f"ST-0{n}" for n in range(1, 5)),
    *(f"NX-0{n}" for n in range(1, 4)),
    *(f"AG-0{n}" for n in range(1, 7)),
    "AU-01",
    "AU-02",
)

#: Checks that honestly do not apply to the sound deployment, and why.
JUSTIFIED_SKIPS = {
    # The deployment runs on the embedded SQLite database and KV store: there is no PostgreSQL
    # or Valkey whose listen addresses, pg_hba rules, bind or protected mode could be asked.
    "NX-03": "embedded stores",
}

#: The weakened deployment: each weakening, and the checks it must make fail (with why).
WEAKENINGS: dict[str, dict[str, str]] = {
    "master.key chmod 0644": {
        "ST-01": "the key's mode must be exactly 0400",
        "ST-04": "0644 has the other-read bit: a world-readable file in $TUNDRA_HOME",
    },
    "Valkey on 0.0.0.0, protected-mode no, no password": {
        "NX-01": "a Valkey (redis-server) listener on a wildcard address",
        "NX-02": "from the namespace, the Valkey port is open and PING answers +PONG",
        "NX-03": "Valkey's own config: bind 0.0.0.0, protected-mode no, default user nopass",
    },
    "a TLS 1.2 proxy in front of the panel": {
        "TR-02": "a TLS 1.2 handshake succeeds",
        "TR-03": "TLS 1.2 suites are negotiable: not only the TLS 1.3 AEAD suites",
    },
    "the proxy strips SameSite=Strict from Set-Cookie": {
        "ID-01": "the session cookie is no longer SameSite=Strict",
    },
}
#: What each failing check's summary must name (the evidence of *why* it failed).
FAILURE_WORDS = {
    "ST-01": "0644",
    "ST-04": "master.key",
    "NX-01": "valkey",
    "NX-02": "PING",
    "NX-03": "protected-mode",
    "TR-02": "TLSv1.2",
    "TR-03": "TLS 1.2",
    "ID-01": "SameSite",
}
#: Checks the weakened key makes undecidable rather than failed: the runner's own core refuses
#: a master key whose mode is not 0400 (as `tundra serve` would at its next start), and these
#: checks need key material on the panel host — AG-03 and AG-05 enroll a throwaway agent (the CA
#: key signs it), AG-06 issues a signed command. An error never hides a failure (exit 1 stays).
KEY_REFUSED_ERRORS = ("AG-03", "AG-05", "AG-06")


def _summaries(report: dict[str, Any], ids: Collection[str] | None = None) -> str:
    return "\n".join(
        f"{c['id']} {c['status']}: {c['summary']}"
        for c in report["checks"]
        if ids is None or c["id"] in ids
    )


def _service_user() -> str:
    # `tundra serve` runs as this test's user; ST-01 wants the key owned by that user.
    return pwd.getpwuid(os.geteuid()).pw_name


def _check_report_files(report: dict[str, Any], reports: Path) -> None:
    """The JSON report validates against its schema; the JUnit and SARIF files exist, parse,
    validate (SARIF: the committed subset schema) and say the same as the JSON report."""
    validator = jsonschema.Draft202012Validator(
        json_reporter.load_schema(),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(report)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    failing = {i for i, s in statuses.items() if s == "fail"}

    root = ET.parse(reports / "acceptance.xml").getroot()  # noqa: S314 - our own report
    suites = root.findall("testsuite") if root.tag == "testsuites" else [root]
    assert {s.get("name") for s in suites} == {c["section"] for c in report["checks"]}
    cases = {
        case.get("name", "").split(" ", 1)[0]: case
        for suite in suites
        for case in suite.iter("testcase")
    }
    assert set(cases) == set(statuses)
    assert {i for i, case in cases.items() if case.find("failure") is not None} == failing

    sarif = json.loads((reports / "acceptance.sarif").read_text())
    schema = json.loads((FIXTURES / "sarif-2.1.0-subset.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(sarif)
    results = sarif["runs"][0]["results"]
    assert {r["ruleId"] for r in results if r["kind"] == "fail"} == failing


def test_a_sound_deployment_passes_every_check(tmp_path: Path) -> None:
    assert tuple(c.id for c in current().all()) == CATALOGUE
    before = wildcard_listeners()  # before anything of ours listens
    with (
        outside_host(40) as outside,
        deployment(tmp_path, host=outside.host_ip) as plane,
    ):
        done, report = run_acceptance(
            plane,
            allowed=before,
            outside_probe=f"ip netns exec {outside.name}",
            reports=tmp_path,
            extra=["--service-user", _service_user()],
        )
        logs = plane.log_text()
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    expected = {i: "skip" if i in JUSTIFIED_SKIPS else "pass" for i in CATALOGUE}
    wrong = {i for i in CATALOGUE if statuses.get(i) != expected[i]}
    assert not wrong, f"{_summaries(report, wrong)}\n{done.stderr[-2000:]}\n{logs}"
    assert list(statuses) == list(CATALOGUE)
    for check_id, why in JUSTIFIED_SKIPS.items():
        skip = next(c for c in report["checks"] if c["id"] == check_id)
        assert why in skip["summary"], skip["summary"]
    assert done.returncode == 0, done.stderr
    assert report["exit_code"] == 0
    assert report["options"]["local"] is True
    assert report["options"]["agent_identity"] is True
    assert report["options"]["allowed_listeners"] == before
    assert report["options"]["service_user"] == _service_user()
    _check_report_files(report, tmp_path)


def _redis_binary() -> str:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        if REQUIRE:
            pytest.fail("redis-server is not installed; TUNDRA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("neither valkey-server nor redis-server is installed")
    return binary


def test_a_weakened_deployment_fails_exactly_the_broken_checks(tmp_path: Path) -> None:
    binary = _redis_binary()
    before = wildcard_listeners()  # before our redis-server and tundra listen
    with (
        outside_host(41) as outside,
        wide_open_redis(binary, tmp_path) as redis_port,
    ):
        # Browsers reach the panel through the proxy: its port is the public https port, so
        # the plain-HTTP redirect (TR-01) and the panel's origin checks point at the proxy.
        proxy_port = free_port(outside.host_ip)
        with (
            deployment(
                tmp_path,
                host=outside.host_ip,
                extra_env={"TUNDRA_VALKEY_URL": f"redis://127.0.0.1:{redis_port}/0"},
                public_https_port=proxy_port,
            ) as plane,
            weak_proxy(plane, port=proxy_port) as proxy_url,
        ):
            # The key is weakened after `tundra serve` has loaded it: serve refuses such a key
            # at start-up, which would leave nothing to test.
            plane.master_key.chmod(0o644)
            done, report = run_acceptance(
                plane,
                url=proxy_url,
                reports=tmp_path,
                allowed=before,
                outside_probe=f"ip netns exec {outside.name}",
                extra=["--service-user", _service_user()],
            )
            logs = plane.log_text()
    expected_failures = {i for broken in WEAKENINGS.values() for i in broken}
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    failing = {i for i, s in statuses.items() if s == "fail"}
    assert failing == expected_failures, f"{_summaries(report)}\n{logs}"
    summaries = {c["id"]: c["summary"] for c in report["checks"]}
    for check_id, word in FAILURE_WORDS.items():
        assert word.lower() in summaries[check_id].lower(), (check_id, summaries[check_id])
    assert str(redis_port) in summaries["NX-01"] and str(redis_port) in summaries["NX-02"]
    errored = {i for i, s in statuses.items() if s == "error"}
    assert errored == set(KEY_REFUSED_ERRORS), _summaries(report, errored)
    for check_id in KEY_REFUSED_ERRORS:
        assert "has mode 0644" in summaries[check_id], summaries[check_id]
    # Everything else is untouched by the weakenings, and still passes (no skip: NX-03 now has
    # a Valkey to ask).
    others = set(CATALOGUE) - expected_failures - errored
    assert {i: statuses[i] for i in others} == dict.fromkeys(others, "pass"), _summaries(report)
    assert done.returncode == 1, done.stderr
    assert report["exit_code"] == 1
    _check_report_files(report, tmp_path)
