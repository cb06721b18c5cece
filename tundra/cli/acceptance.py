"""``tundra acceptance``: prove a live deployment meets the security spec (run, list).

The command parses options, reads secrets from the environment (or a hidden prompt), calls the
core runner once and renders: a live progress display and a table on a terminal, plain lines
otherwise, JSON with ``--format json``, and JUnit/SARIF files on request.

Exit codes (docs/acceptance.md): 0 everything passed (waived and skipped allowed), 1 a failure
at or above ``--fail-on``, 2 nothing failed but a check errored (could not decide), 64 a usage
error (bad option, unreadable waiver or baseline file, unset environment variable).
"""

# No `from __future__ import annotations` here: typer reads these annotations at start-up, and
# real objects spare it evaluating strings (about 5 ms per command group; bench/cli_startup.py).

import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer

from tundra.cli import auth
from tundra.cli.exit import ExitStatus
from tundra.cli.output import info, print_json, warn
from tundra.core.errors import ConfigError, InvalidFile, InvalidInput

if TYPE_CHECKING:
    from tundra.core.acceptance.judge import JudgeReport
    from tundra.core.acceptance.model import Report
    from tundra.core.acceptance.runner import ProgressEvent
    from tundra.core.services import Services

app = typer.Typer(
    help="Prove a live deployment meets the security spec.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Example: tundra acceptance run --url https://panel.example.com --section identity",
)


class Format(StrEnum):
    table = "table"
    json = "json"


class SectionName(StrEnum):
    transport = "transport"
    headers = "headers"
    identity = "identity"
    storage = "storage"
    network = "network"
    agent = "agent"
    audit = "audit"


class SeverityName(StrEnum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"


_STYLE = {
    "pass": "green",
    "fail": "bold red",
    "error": "yellow",
    "skip": "dim",
    "waived": "cyan",
}


def _env_secret(option: str, variable: str) -> str:
    value = os.environ.get(variable)
    if value is None:
        raise InvalidInput(
            f"{option} {variable}: the environment variable {variable} is not set",
            hint=f"export {variable}=… before running, or use a secret store of the CI",
        )
    return value


def _password(user: str | None, password_env: str | None) -> str | None:
    if password_env and not user:
        raise InvalidInput("--password-env needs --user")
    if not user:
        return None
    if password_env:
        return _env_secret("--password-env", password_env)
    if not auth.interactive():
        raise InvalidInput(
            f"no password for --user {user}",
            hint="give --password-env VAR (never the password itself on the command line)",
        )
    return str(click.prompt(f"Password of {user}", hide_input=True, err=True))


def _local_services(local: bool | None, url_host: str) -> "Services | None":
    """The local control plane when running on the panel host (``--local``, or detected:
    an initialised home whose panel host names include the --url host)."""
    if local is False:
        return None
    from tundra.cli.context import services
    from tundra.core.home import is_initialized

    try:
        svc = services()
        ready = is_initialized(svc)
    except ConfigError as exc:
        if local:
            warn(f"--local: the control plane cannot be opened ({exc}); local checks skip")
        return None
    if not ready:
        if local:
            warn("--local: $TUNDRA_HOME is not initialised here; checks needing it skip")
        return None
    if local is None:
        names = {n.strip().strip("[]") for n in svc.settings.panel_hostnames.split(",")}
        if url_host not in names:
            return None
    return svc


def _progress_display(total_hint: int) -> Any:
    """A rich live display on stderr: a bar, the checks running now, a line per result."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]acceptance[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    task = progress.add_task("", total=total_hint or None)
    running: set[str] = set()

    def on_progress(event: "ProgressEvent") -> None:
        if event.kind == "started":
            progress.update(task, total=event.total)
        elif event.kind == "check_started" and event.check:
            running.add(event.check.id)
        elif event.kind == "check_finished" and event.check and event.result:
            running.discard(event.check.id)
            result = event.result
            style = _STYLE[str(result.status)]
            console.print(
                f"[{style}]{str(result.status).upper():6}[/{style}] {result.id} "
                f"{result.title}: {result.summary}",
                highlight=False,
                markup=True,
            )
        progress.update(task, completed=event.done, description=", ".join(sorted(running)))

    return progress, on_progress


def _render_table(report: "Report") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Acceptance of {report.target}", header_style="bold")
    for column in ("id", "status", "severity", "title", "summary"):
        table.add_column(column, overflow="fold")
    for r in report.results:
        style = _STYLE[str(r.status)]
        table.add_row(
            r.id,
            f"[{style}]{r.status}[/{style}]",
            str(r.severity),
            escape(r.title),
            escape(r.summary),
        )
    console = Console()
    console.print(table)
    _render_footer(report, lambda text: console.print(text, markup=False, highlight=False))


def _render_plain(report: "Report") -> None:
    for r in report.results:
        sys.stdout.write(f"{r.id}\t{r.status}\t{r.severity}\t{r.title}\t{r.summary}\n")
    _render_footer(report, lambda text: sys.stdout.write(f"{text}\n"))


def _render_footer(report: "Report", write: Any) -> None:
    for note in report.notes:
        write(f"note: {note}")
    if report.baseline is not None:
        diff = report.baseline
        for key in ("new", "fixed", "unchanged"):
            write(f"baseline {key}: {', '.join(diff[key]) or '-'}")
    counts = report.counts()
    write(
        ", ".join(f"{counts[k]} {k}" for k in ("pass", "fail", "error", "skip", "waived"))
        + f" (fail-on {report.fail_on}; exit {report.exit_code})"
    )


_AGREEMENT_STYLE = {
    "agree": "green",
    "scanner_laxer": "cyan",
    "scanner_stricter": "bold yellow",
    "not_compared": "dim",
}
_AGREEMENT_TEXT = {
    "agree": "agree",
    "scanner_laxer": "laxer (expected)",
    "scanner_stricter": "stricter: look",
    "not_compared": "not compared",
}


def _render_judge_table(judge: "JudgeReport") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    scanners = Table(title="Judge: public scanners", header_style="bold")
    for column in ("scanner", "status", "version", "summary"):
        scanners.add_column(column, overflow="fold")
    for run in judge.scanners:
        scanners.add_row(run.name, str(run.status), run.version or "", escape(run.summary))
    console.print(scanners)
    if judge.comparisons:
        table = Table(title="Judge: verdicts per check", header_style="bold")
        for column in ("id", "scanner", "tundra", "scanner says", "agreement", "scanner evidence"):
            table.add_column(column, overflow="fold")
        for c in judge.comparisons:
            style = _AGREEMENT_STYLE[str(c.agreement)]
            table.add_row(
                c.check,
                c.scanner,
                c.tundra or "-",
                c.scanner_verdict,
                f"[{style}]{_AGREEMENT_TEXT[str(c.agreement)]}[/{style}]",
                escape(c.evidence[0] if c.evidence else ""),
            )
        console.print(table)
    _render_judge_footer(judge, lambda text: console.print(text, markup=False, highlight=False))


def _render_judge_plain(judge: "JudgeReport") -> None:
    for run in judge.scanners:
        sys.stdout.write(f"judge\t{run.name}\t{run.status}\t{run.summary}\n")
    for c in judge.comparisons:
        evidence = c.evidence[0] if c.evidence else ""
        sys.stdout.write(
            f"judge\t{c.check}\t{c.scanner}\ttundra {c.tundra or '-'}\t"
            f"scanner {c.scanner_verdict}\t{c.agreement}\t{evidence}\n"
        )
    _render_judge_footer(judge, lambda text: sys.stdout.write(f"{text}\n"))


def _render_judge_footer(judge: "JudgeReport", write: Any) -> None:
    for c in judge.needs_review():
        write(f"judge: needs a human look: {c.check} ({c.scanner}): {'; '.join(c.evidence[:2])}")
    counts = judge.counts()
    write(
        "judge: "
        + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
        + f" ({judge.duration_ms / 1000:.1f}s; the exit code is tundra's alone)"
    )


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None


FileOption: dict[str, Any] = {
    "exists": True,
    "dir_okay": False,
    "readable": True,
    "resolve_path": True,
}


@app.command(
    "run",
    epilog="Example: TUNDRA_PW=… tundra acceptance run --url https://panel.example.com"
    " --user acceptance --password-env TUNDRA_PW --junit acceptance.xml",
)
def run_(
    url: Annotated[str, typer.Option("--url", help="The panel's https origin.")],
    section: Annotated[
        list[SectionName] | None, typer.Option("--section", help="Only this section (repeatable).")
    ] = None,
    check: Annotated[
        list[str] | None, typer.Option("--check", help="Only this check id (repeatable).")
    ] = None,
    output_format: Annotated[
        Format, typer.Option("--format", help="table (people) or json (stdout, stable schema).")
    ] = Format.table,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML here.", dir_okay=False)
    ] = None,
    sarif: Annotated[
        Path | None, typer.Option("--sarif", help="Also write SARIF 2.1.0 here.", dir_okay=False)
    ] = None,
    waivers: Annotated[
        Path | None,
        typer.Option("--waivers", help="TOML file of accepted failures (see docs).", **FileOption),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="A previous JSON report to compare with.", **FileOption),
    ] = None,
    fail_on: Annotated[
        SeverityName,
        typer.Option("--fail-on", help="Exit 1 only for failures at least this severe."),
    ] = SeverityName.low,
    local: Annotated[
        bool | None,
        typer.Option(
            "--local/--remote",
            help="Run the host-local checks (on the panel host). Default: detected.",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file", help="Trust this CA (PEM) instead of the system store.", **FileOption
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Account for the identity and audit checks.")
    ] = None,
    password_env: Annotated[
        str | None,
        typer.Option("--password-env", metavar="VAR", help="Read --user's password from $VAR."),
    ] = None,
    totp_secret_env: Annotated[
        str | None,
        typer.Option(
            "--totp-secret-env", metavar="VAR", help="Read the account's TOTP secret from $VAR."
        ),
    ] = None,
    agent_cert: Annotated[
        Path | None,
        typer.Option("--agent-cert", help="A test agent's certificate (PEM).", **FileOption),
    ] = None,
    agent_key: Annotated[
        Path | None,
        typer.Option("--agent-key", help="The test agent's private key (PEM).", **FileOption),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", metavar="HOST:PORT", help="Agent gateway (default host:7447)."),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Signed audit checkpoint to verify against.", **FileOption
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port", help="Port of the plain-HTTP redirect (default 80).", min=1, max=65535
        ),
    ] = None,
    page: Annotated[
        list[str] | None, typer.Option("--page", help="Extra panel page to probe (repeatable).")
    ] = None,
    outside_probe: Annotated[
        str | None,
        typer.Option(
            "--outside-probe",
            metavar="CMD",
            help="Command prefix running the outside-view probes, e.g. 'ip netns exec out'.",
        ),
    ] = None,
    judge: Annotated[
        bool,
        typer.Option(
            "--judge",
            help="Also run the installed public scanners on the target and compare per check.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", help="Time limit of each check in seconds (default: its own).", min=0.1
        ),
    ] = None,
    allow_listener: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-listener",
            metavar="HOST:PORT",
            help="A wildcard listener you accept besides the panel and gateway (repeatable; "
            "NX-01), e.g. 0.0.0.0:22.",
        ),
    ] = None,
    service_user: Annotated[
        str | None,
        typer.Option(
            "--service-user",
            metavar="NAME",
            help="The user tundra serve runs as (ST-01). Default: found from the process.",
        ),
    ] = None,
) -> None:
    """Run the acceptance checks against a live deployment and report."""
    from tundra.core.acceptance.baseline import load_baseline
    from tundra.core.acceptance.context import RunOptions, Target
    from tundra.core.acceptance.model import Severity
    from tundra.core.acceptance.registry import current
    from tundra.core.acceptance.reporters import json as json_reporter
    from tundra.core.acceptance.reporters import junit as junit_reporter
    from tundra.core.acceptance.reporters import sarif as sarif_reporter
    from tundra.core.acceptance.runner import run
    from tundra.core.acceptance.waivers import load_waivers

    if (agent_cert is None) != (agent_key is None):
        raise InvalidInput("--agent-cert and --agent-key go together")
    target = Target.parse(url, http_port=http_port)
    registry = current()
    selected = registry.select([s.value for s in section or ()], check or ())
    try:
        loaded_waivers = (
            load_waivers(waivers, known_ids=[c.id for c in registry.all()]) if waivers else []
        )
        loaded_baseline = load_baseline(baseline) if baseline else None
    except InvalidFile as exc:
        # A bad waiver or baseline file is a usage error of this command (exit 64).
        raise InvalidInput(exc.message, hint=exc.hint) from None
    password = _password(user, password_env)
    totp_secret = _env_secret("--totp-secret-env", totp_secret_env) if totp_secret_env else None
    svc = _local_services(local, target.host)
    if svc is not None and http_port is None:
        from tundra.core.acceptance.service import local_defaults

        target_http = local_defaults(svc)["http_port"]
    else:
        target_http = http_port
    options = RunOptions(
        url=url,
        sections=tuple(s.value for s in section or ()),
        checks=tuple(c.upper() for c in check or ()),
        ca_file=ca_file,
        user=user,
        password=password,
        totp_secret=totp_secret,
        agent_cert=agent_cert,
        agent_key=agent_key,
        gateway=gateway,
        local=bool(local) or svc is not None,
        services=svc,
        timeout=timeout,
        checkpoint=checkpoint,
        pages=tuple(page or ()),
        outside_probe=tuple(shlex.split(outside_probe)) if outside_probe else (),
        http_port=target_http,
        judge=judge,
        fail_on=Severity(fail_on.value),
        allowed_listeners=tuple(allow_listener or ()),
        service_user=service_user,
    )
    # AG-06 replays a real signed command through the agent's own guard; core cannot import
    # the agent package, so the front end lends it.
    from tundra.agent.guard import CommandGuard
    from tundra.core.acceptance.checks.agent import install_command_guard

    if gateway:
        options.gateway_address(target)  # a malformed HOST:PORT is a usage error now
    live = output_format is Format.table and sys.stderr.isatty() and sys.stdout.isatty()
    previous_guard = install_command_guard(CommandGuard)
    try:
        if live:
            progress, on_progress = _progress_display(len(selected))
            with progress:
                report = run(
                    options,
                    checks=selected,
                    waivers=loaded_waivers,
                    baseline=loaded_baseline,
                    on_progress=on_progress,
                )
        else:
            report = run(options, checks=selected, waivers=loaded_waivers, baseline=loaded_baseline)
    finally:
        install_command_guard(previous_guard)
    judge_report = None
    if judge:
        from tundra.core.acceptance.judge import run_judge

        if live:
            info("judge: running the installed public scanners against the same target…")
        # Scanners that are missing, crash or hang are reported; the exit code stays tundra's.
        judge_report = run_judge(report, options)
    if junit is not None:
        _write(junit, junit_reporter.dumps(report))
    if sarif is not None:
        _write(sarif, sarif_reporter.dumps(report))
    if output_format is Format.json:
        sys.stdout.write(json_reporter.dumps(report, judge=judge_report))
    elif sys.stdout.isatty():
        _render_table(report)
        if judge_report is not None:
            _render_judge_table(judge_report)
    else:
        _render_plain(report)
        if judge_report is not None:
            _render_judge_plain(judge_report)
    if report.exit_code == 1:
        raise typer.Exit(int(ExitStatus.FAILURE))
    if report.exit_code == 2:
        # The catalogue's "nothing failed, but something could not be decided": no ExitStatus
        # member means that, and the number is part of this command's documented contract.
        raise typer.Exit(2)


@app.command("list", epilog="Example: tundra acceptance list --section agent --json")
def list_(
    section: Annotated[
        list[SectionName] | None, typer.Option("--section", help="Only this section (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the checks of the catalogue: id, section, severity, what it needs, title."""
    from tundra.core.acceptance.registry import current

    checks = current().select([s.value for s in section or ()])
    rows: list[dict[str, Any]] = [
        {
            "id": c.id,
            "section": str(c.section),
            "severity": str(c.severity),
            "title": c.title,
            "local": c.local,
            "needs": list(c.needs),
            "timeout": c.timeout,
        }
        for c in checks
    ]
    if as_json:
        print_json(rows)
        return
    from tundra.cli.output import print_table

    print_table(
        "Acceptance checks",
        ["id", "section", "severity", "needs", "title"],
        [
            (
                c.id,
                c.section,
                c.severity,
                ", ".join(
                    (["local"] if c.local and "services" not in c.needs else []) + list(c.needs)
                ),
                c.title,
            )
            for c in checks
        ],
    )
    info(f"{len(rows)} checks")
