"""``tundra acceptance run|list`` through the real error boundary: exit codes 0/1/2/64, the
output formats, secrets from the environment only, --local detection, and the acceptance
account of ``tundra user add --acceptance``.

The checks are fakes in a registry installed with ``registry.use`` for one test at a time
(the ``fakes`` fixture), so nothing registered here leaks into other tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from clihelpers import SQLITE_ONLY, run

from tundra.core.acceptance import registry as registry_module
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity, errored, failed, passed
from tundra.core.acceptance.registry import Registry
from tundra.core.acceptance.reporters.json import load_schema
from tundra.core.services import Services

URL = "https://panel.test"
SECRET = "s3cret-acceptance-passphrase"


class Fakes:
    """A registry whose checks' outcomes a test sets, recording what they were given."""

    def __init__(self) -> None:
        self.registry = Registry(strict_catalogue=False)
        self.outcomes: dict[str, Outcome] = {}
        self.seen: dict[str, RunContext] = {}

    def add(
        self,
        check_id: str,
        section: Section,
        outcome: Outcome,
        *,
        severity: Severity = Severity.HIGH,
        **kwargs: Any,
    ) -> None:
        self.outcomes[check_id] = outcome

        def fn(ctx: RunContext) -> Outcome:
            self.seen[check_id] = ctx
            return self.outcomes[check_id]

        self.registry.check(
            check_id, f"Title {check_id}", section=section, severity=severity, **kwargs
        )(fn)


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    before = registry_module.current
    made = Fakes()
    with registry_module.use(made.registry):
        yield made
    assert registry_module.current is before
    assert registry_module.current() is not made.registry  # nothing leaks out of the test


def standard(fakes: Fakes, *, hd: Outcome | None = None, tr: Outcome | None = None) -> None:
    fakes.add("TR-01", Section.TRANSPORT, tr or passed("redirects"))
    fakes.add("HD-01", Section.HEADERS, hd or passed("csp ok"))


# --- exit codes ---------------------------------------------------------------------------------


@SQLITE_ONLY
def test_all_passing_exits_0_and_prints_every_check(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes)
    result = run(env, "acceptance", "run", "--url", URL)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["TR-01", "pass", "high"]
    assert lines[1].startswith("HD-01\tpass")
    assert "2 pass, 0 fail, 0 error, 0 skip, 0 waived" in result.stdout


@SQLITE_ONLY
def test_a_failure_exits_1(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes, hd=failed("unsafe-inline in script-src"))
    result = run(env, "acceptance", "run", "--url", URL)
    assert result.exit_code == 1
    assert "HD-01\tfail\thigh\tTitle HD-01\tunsafe-inline in script-src" in result.stdout


@SQLITE_ONLY
def test_an_error_without_failures_exits_2(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes, tr=errored("connection refused"))
    result = run(env, "acceptance", "run", "--url", URL)
    assert result.exit_code == 2
    assert "TR-01\terror" in result.stdout


@SQLITE_ONLY
def test_a_failure_and_an_error_exit_1(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes, tr=errored("connection refused"), hd=failed("no csp"))
    assert run(env, "acceptance", "run", "--url", URL).exit_code == 1


@SQLITE_ONLY
def test_fail_on_ignores_less_severe_failures(env: dict[str, str], fakes: Fakes) -> None:
    fakes.add("HD-05", Section.HEADERS, failed("Server: nginx/1.2"), severity=Severity.LOW)
    assert run(env, "acceptance", "run", "--url", URL).exit_code == 1
    result = run(env, "acceptance", "run", "--url", URL, "--fail-on", "medium")
    assert result.exit_code == 0
    assert "fail-on medium" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://panel.test"], "must be an https URL"),
        (["--url", "https://panel.test/admin"], "without a path"),
        (["--url", "https://["], "is not a URL"),
        (["--url", URL, "--check", "ZZ-99"], "unknown check"),
        (["--url", URL, "--section", "storage"], "no checks selected"),
        (["--url", URL, "--section", "nonsense"], "nonsense"),
        (["--url", URL, "--fail-on", "urgent"], "urgent"),
        (["--url", URL, "--password-env", "ACCEPTANCE_PW"], "--password-env needs --user"),
        (
            ["--url", URL, "--user", "acc", "--password-env", "UNSET_VARIABLE_X"],
            "UNSET_VARIABLE_X is not set",
        ),
        (["--url", URL, "--user", "acc"], "--password-env"),  # no terminal to prompt on
        (["--url", URL, "--gateway", "nohost"], "HOST:PORT"),
        (["--url", URL, "--timeout", "0"], "--timeout"),
        (["--url", URL, "--waivers", "/nonexistent/waivers.toml"], "does not exist"),
        ([], "--url"),
    ],
)
@SQLITE_ONLY
def test_usage_errors_exit_64(
    env: dict[str, str], fakes: Fakes, args: list[str], message: str
) -> None:
    standard(fakes)
    result = run(env, "acceptance", "run", *args)
    assert result.exit_code == 64, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert fakes.seen == {}  # nothing ran


@SQLITE_ONLY
def test_agent_cert_without_key_exits_64(env: dict[str, str], fakes: Fakes, tmp_path: Path) -> None:
    standard(fakes)
    cert = tmp_path / "agent.crt"
    cert.write_text("x")
    result = run(env, "acceptance", "run", "--url", URL, "--agent-cert", str(cert))
    assert result.exit_code == 64
    assert "--agent-cert and --agent-key go together" in result.stderr


@SQLITE_ONLY
def test_a_malformed_waiver_file_exits_64_naming_the_entry(
    env: dict[str, str], fakes: Fakes, tmp_path: Path
) -> None:
    standard(fakes)
    waivers = tmp_path / "waivers.toml"
    waivers.write_text('[[waiver]]\ncheck = "HD-01"\nexpires = 2999-01-01\n')
    result = run(env, "acceptance", "run", "--url", URL, "--waivers", str(waivers))
    assert result.exit_code == 64
    assert "entry 1 (line 1)" in result.stderr and "justification" in result.stderr


@SQLITE_ONLY
def test_a_waived_failure_exits_0_and_an_expired_one_1(
    env: dict[str, str], fakes: Fakes, tmp_path: Path
) -> None:
    standard(fakes, hd=failed("no csp"))
    waivers = tmp_path / "waivers.toml"
    entry = '[[waiver]]\ncheck = "HD-01"\njustification = "the CDN adds it (OPS-9)"\n'
    waivers.write_text(entry + "expires = 2999-01-01\n")
    result = run(env, "acceptance", "run", "--url", URL, "--waivers", str(waivers))
    assert result.exit_code == 0
    assert "HD-01\twaived" in result.stdout
    waivers.write_text(entry + "expires = 2001-01-01\n")
    result = run(env, "acceptance", "run", "--url", URL, "--waivers", str(waivers))
    assert result.exit_code == 1
    assert "note: the waiver for HD-01 expired on 2001-01-01" in result.stdout


# --- formats ------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_json_to_stdout_validates(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes, hd=failed("no csp"))
    result = run(env, "acceptance", "run", "--url", URL, "--format", "json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)  # stdout holds exactly the report
    jsonschema.Draft202012Validator(load_schema()).validate(document)
    assert document["exit_code"] == 1
    assert [c["status"] for c in document["checks"]] == ["pass", "fail"]


@SQLITE_ONLY
def test_junit_and_sarif_files(env: dict[str, str], fakes: Fakes, tmp_path: Path) -> None:
    standard(fakes)
    junit, sarif = tmp_path / "a.xml", tmp_path / "a.sarif"
    result = run(
        env, "acceptance", "run", "--url", URL, "--junit", str(junit), "--sarif", str(sarif)
    )
    assert result.exit_code == 0
    assert junit.read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites')
    assert json.loads(sarif.read_text())["version"] == "2.1.0"


@SQLITE_ONLY
def test_baseline_diff_is_shown(env: dict[str, str], fakes: Fakes, tmp_path: Path) -> None:
    standard(fakes, hd=failed("no csp"))
    old = tmp_path / "old.json"
    old.write_text(run(env, "acceptance", "run", "--url", URL, "--format", "json").stdout)
    fakes.outcomes["HD-01"] = passed("csp ok")
    fakes.outcomes["TR-01"] = failed("no redirect")
    result = run(env, "acceptance", "run", "--url", URL, "--baseline", str(old))
    assert "baseline new: TR-01" in result.stdout
    assert "baseline fixed: HD-01" in result.stdout
    assert result.exit_code == 1  # a baseline informs; it does not excuse


# --- secrets ------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_credentials_come_from_the_environment_and_never_show(
    env: dict[str, str], fakes: Fakes, tmp_path: Path
) -> None:
    fakes.add("ID-01", Section.IDENTITY, passed("logged in"), needs=["credentials"])
    environment = {**env, "ACCEPTANCE_PW": SECRET, "ACCEPTANCE_TOTP": "JBSWY3DPEHPK3PXP"}
    junit = tmp_path / "r.xml"
    result = run(
        environment,
        "acceptance", "run", "--url", URL, "--user", "acc",
        "--password-env", "ACCEPTANCE_PW", "--totp-secret-env", "ACCEPTANCE_TOTP",
        "--format", "json", "--junit", str(junit),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    options = fakes.seen["ID-01"].options
    assert (options.user, options.password, options.totp_secret) == (
        "acc",
        SECRET,
        "JBSWY3DPEHPK3PXP",
    )
    for text in (result.stdout, result.stderr, junit.read_text()):
        assert SECRET not in text and "JBSWY3DPEHPK3PXP" not in text
    assert json.loads(result.stdout)["options"]["credentials"] is True


@SQLITE_ONLY
def test_a_check_needing_credentials_skips_naming_the_option(
    env: dict[str, str], fakes: Fakes
) -> None:
    fakes.add("ID-01", Section.IDENTITY, passed("logged in"), needs=["credentials"])
    result = run(env, "acceptance", "run", "--url", URL)
    assert result.exit_code == 0
    assert "ID-01\tskip" in result.stdout and "--password-env" in result.stdout


# --- local --------------------------------------------------------------------------------------


def local_check(fakes: Fakes) -> None:
    fakes.add("ST-04", Section.STORAGE, passed("private"), needs=["services"])


@SQLITE_ONLY
def test_local_runs_host_checks_with_the_services(
    env: dict[str, str], fakes: Fakes, services: Services
) -> None:
    local_check(fakes)
    result = run(env, "acceptance", "run", "--url", URL, "--local")
    assert result.exit_code == 0, result.stdout
    seen = fakes.seen["ST-04"].options
    assert seen.local and seen.services is not None
    assert seen.services.settings.home == services.settings.home
    assert seen.http_port == 8080  # the panel's redirect listener, for TR-01


@SQLITE_ONLY
def test_local_is_detected_for_the_panel_host_name(env: dict[str, str], fakes: Fakes) -> None:
    local_check(fakes)
    result = run(env, "acceptance", "run", "--url", "https://localhost:8443")
    assert "ST-04\tpass" in result.stdout
    remote = run(env, "acceptance", "run", "--url", "https://localhost:8443", "--remote")
    assert "ST-04\tskip" in remote.stdout and "--local" in remote.stdout
    elsewhere = run(env, "acceptance", "run", "--url", URL)
    assert "ST-04\tskip" in elsewhere.stdout


def test_local_without_a_home_warns_and_skips(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_check(fakes)
    env = {"TUNDRA_HOME": str(tmp_path / "empty"), "TUNDRA_PASSWORD_PROFILE": "test"}
    monkeypatch.delenv("TUNDRA_DATABASE_URL", raising=False)
    result = run(env, "acceptance", "run", "--url", URL, "--local")
    assert result.exit_code == 0
    assert "warning: --local" in result.stderr
    assert "ST-04\tskip" in result.stdout


# --- list ---------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_list_json_and_table(env: dict[str, str], fakes: Fakes) -> None:
    standard(fakes)
    local_check(fakes)
    listed = json.loads(run(env, "acceptance", "list", "--json").stdout)
    assert [c["id"] for c in listed] == ["TR-01", "HD-01", "ST-04"]
    assert listed[2]["needs"] == ["services"] and listed[2]["local"] is True
    only = json.loads(run(env, "acceptance", "list", "--section", "storage", "--json").stdout)
    assert [c["id"] for c in only] == ["ST-04"]
    table = run(env, "acceptance", "list")
    assert table.exit_code == 0 and "HD-01" in table.stdout and "3 checks" in table.stderr


@SQLITE_ONLY
def test_list_shows_the_real_catalogue(env: dict[str, str]) -> None:
    listed = json.loads(run(env, "acceptance", "list", "--json").stdout)
    ids = [c["id"] for c in listed]
    assert "AU-01" in ids and "AU-02" in ids
    assert ids == sorted(ids, key=ids.index)  # catalogue order, no duplicates
    assert len(set(ids)) == len(ids)


# --- the acceptance account ---------------------------------------------------------------------


@SQLITE_ONLY
def test_user_add_acceptance_makes_a_non_admin_account(
    env: dict[str, str], services: Services
) -> None:
    result = run(
        env, "user", "add", "ci-accept", "--acceptance", "--password-stdin",
        stdin="a long acceptance passphrase\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    user = services.users.get("ci-accept")
    assert user.is_acceptance and not user.is_admin
    assert "--user ci-accept --password-env" in result.stderr
    table = run(env, "user", "list")
    assert "acceptance" in table.stdout


@SQLITE_ONLY
def test_an_acceptance_account_cannot_be_an_admin(env: dict[str, str], services: Services) -> None:
    result = run(
        env, "user", "add", "ci-accept", "--acceptance", "--admin", "--password-stdin",
        stdin="a long acceptance passphrase\n",
    )  # fmt: skip
    assert result.exit_code == 64
    assert "cannot be an administrator" in result.stderr
    assert [u.name for u in services.users.list()] == ["admin"]


def test_no_stray_environment() -> None:
    assert "ACCEPTANCE_PW" not in os.environ
