"""Acceptance runs for the panel and the API: start one in the background, watch it, read it.

:class:`AcceptanceService` is the one entry for front ends that cannot block for the length of
a run (the panel's admin page, ``POST /api/v1/acceptance-runs``). Only administrators may start
or read runs; starting and finishing are audited. A run's state (progress while it runs, the
JSON report when done) is kept in the KV store for :data:`KEEP_SECONDS`; one run at a time per
installation (a second start is a Conflict), since the checks log in, create tokens and probe
throttling, which two runs at once would make each other fail.

The CLI does not use this service: it runs :func:`tundra.core.acceptance.runner.run` in the
foreground with a live display.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.context import RunOptions, Target
from tundra.core.acceptance.reporters.json import report_to_dict
from tundra.core.acceptance.runner import ProgressEvent, run
from tundra.core.acceptance.waivers import Waiver
from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import Conflict, InvalidInput, NotFound
from tundra.core.identity.users import require_admin
from tundra.core.uow import record_only

if TYPE_CHECKING:
    from tundra.core.principal import Principal
    from tundra.core.services import Services

KEEP_SECONDS = 7 * 24 * 3600
#: The lock of the one running run; longer than any run, released when the run ends.
LOCK_SECONDS = 3600
_LOCK_KEY = "acceptance:running"


def _key(run_id: str) -> str:
    return f"acceptance:run:{run_id}"


@dataclass(frozen=True)
class RunState:
    """A run as the panel and the API show it."""

    id: str
    status: str  # "running", "finished", "crashed"
    started_by: str
    started_at: str
    target: str
    total: int = 0
    done: int = 0
    #: Ids of the checks running now.
    running: tuple[str, ...] = ()
    #: Results so far (each a Result.to_dict()), in the order they finished.
    results: tuple[dict[str, Any], ...] = ()
    finished_at: str | None = None
    #: The JSON report (reporters.json schema) once finished.
    report: dict[str, Any] | None = None
    exit_code: int | None = None
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "started_by": self.started_by,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "target": self.target,
            "total": self.total,
            "done": self.done,
            "running": list(self.running),
            "results": list(self.results),
            "exit_code": self.exit_code,
            "error": self.error,
            "options": self.options,
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        return cls(
            id=data["id"],
            status=data["status"],
            started_by=data["started_by"],
            started_at=data["started_at"],
            target=data["target"],
            total=data.get("total", 0),
            done=data.get("done", 0),
            running=tuple(data.get("running", ())),
            results=tuple(data.get("results", ())),
            finished_at=data.get("finished_at"),
            report=data.get("report"),
            exit_code=data.get("exit_code"),
            error=data.get("error"),
            options=data.get("options", {}),
        )


def local_defaults(services: Services) -> dict[str, Any]:
    """Where this installation's panel is, for a run on the panel host: the URL browsers use,
    the CA that issued the panel's certificate (unless the operator brought one), and the
    port of the plain-HTTP redirect listener (TR-01)."""
    settings = services.settings
    host = settings.panel_hostnames.split(",")[0].strip() or "localhost"
    url = Target(host=host, port=settings.public_https_port).base_url
    http_port = None
    if settings.redirect_listen:
        _, _, port = settings.redirect_listen.rpartition(":")
        http_port = int(port) if port.isdigit() else None
    ca_file = None if settings.tls_cert_file else services.pki.ca_cert_path
    return {"url": url, "ca_file": ca_file, "http_port": http_port}


def _port_of(listen: str) -> int | None:
    _, _, port = listen.rpartition(":")
    return int(port) if port.isdigit() else None


def allowed_targets(services: Services) -> tuple[frozenset[str], frozenset[int]]:
    """The hosts and ports a run started through the panel or the API may connect to."""
    settings = services.settings
    hosts = frozenset(
        name.strip().strip("[]").lower()
        for name in settings.panel_hostnames.split(",")
        if name.strip()
    )
    ports = {settings.public_https_port}
    listen_port = _port_of(settings.panel_listen)
    if listen_port is not None:
        ports.add(listen_port)
    return hosts, frozenset(ports)


def check_target(services: Services, url: str) -> Target:
    """``url`` parsed, if it names this panel; InvalidInput otherwise.

    A run started through the panel or the API makes this server connect where the URL says:
    limited to the panel's own hostnames and ports, an administrator's session or token cannot
    turn it into a probe of other hosts (server-side request forgery). The command line, run by
    an operator on a host of their choosing, has no such limit.
    """
    try:
        target = Target.parse(url)
    except ValueError:  # NFKC look-alikes and other refusals of urlsplit
        raise InvalidInput(f"not a URL: {url[:80]!r}") from None
    hosts, ports = allowed_targets(services)
    if target.host.lower() not in hosts or target.port not in ports:
        raise InvalidInput(
            f"{target.base_url} is not this panel: a run started here may only test this "
            "panel's own hostnames and ports",
            hint="hosts: "
            + ", ".join(sorted(hosts))
            + "; ports: "
            + ", ".join(str(p) for p in sorted(ports))
            + "; test another deployment with `tundra acceptance run --url` from a shell",
        )
    return target


class AcceptanceService:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._threads: dict[str, threading.Thread] = {}

    # -- starting -------------------------------------------------------------------------

    def start(
        self,
        principal: Principal,
        options: RunOptions,
        *,
        waivers: tuple[Waiver, ...] = (),
        request_id: str | None = None,
    ) -> RunState:
        """Start a run in a background thread and return its first state (status running).

        ``options.local`` runs the host-local checks with this installation's services.
        """
        services = self._services
        require_admin(services, principal, request_id=request_id)
        if options.local:
            options = replace(options, services=services)
        check_target(services, options.url)  # only this panel: see check_target
        target = Target.parse(options.url, http_port=options.http_port)
        if options.checks or options.sections:
            from tundra.core.acceptance.registry import select

            if not select(options.sections, options.checks):
                raise InvalidInput("no checks selected")
        run_id = new_id()
        kv = services.kv
        if not kv.set_if_absent(_LOCK_KEY, run_id.encode(), ttl=LOCK_SECONDS):
            raise Conflict("an acceptance run is running already", hint="wait for it to finish")
        state = RunState(
            id=run_id,
            status="running",
            started_by=principal.actor,
            started_at=now_iso(),
            target=target.base_url,
            options=options.summary(),
        )
        try:
            record_only(
                services.db,
                principal,
                Action.ACCEPTANCE_RUN_START,
                f"acceptance-run:{run_id}",
                {
                    "target": target.base_url,
                    "sections": list(options.sections),
                    "checks": list(options.checks),
                    "local": options.local,
                    "user": options.user,
                },
                request_id=request_id,
            )
            self._save(state)
        except BaseException:
            kv.delete_if_equals(_LOCK_KEY, run_id.encode())
            raise
        thread = threading.Thread(
            target=self._run,
            args=(state, options, waivers, principal, request_id),
            name=f"acceptance-{run_id[:8]}",
            daemon=True,
        )
        self._threads[run_id] = thread
        thread.start()
        return state

    def get(self, principal: Principal, run_id: str, *, request_id: str | None = None) -> RunState:
        require_admin(self._services, principal, request_id=request_id)
        raw = self._services.kv.get(_key(run_id))
        if raw is None:
            raise NotFound(f"no acceptance run {run_id[:40]!r}", hint="runs are kept for 7 days")
        return RunState.from_dict(json.loads(raw))

    def wait(self, run_id: str, *, timeout: float | None = None) -> bool:
        """Block until the run started by this service object ends (tests, the CLI's --wait)."""
        thread = self._threads.get(run_id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the background thread ------------------------------------------------------------

    def _save(self, state: RunState) -> None:
        self._services.kv.set(
            _key(state.id), json.dumps(state.to_dict()).encode(), ttl=KEEP_SECONDS
        )

    def _run(
        self,
        state: RunState,
        options: RunOptions,
        waivers: tuple[Waiver, ...],
        principal: Principal,
        request_id: str | None,
    ) -> None:
        services = self._services
        lock = threading.Lock()
        current = state
        last_save = 0.0

        def progress(event: ProgressEvent) -> None:
            nonlocal current, last_save
            with lock:
                running = set(current.running)
                results = list(current.results)
                if event.kind == "check_started" and event.check:
                    running.add(event.check.id)
                elif event.kind == "check_finished" and event.check and event.result:
                    running.discard(event.check.id)
                    results.append(event.result.to_dict())
                current = replace(
                    current,
                    total=event.total,
                    done=event.done,
                    running=tuple(sorted(running)),
                    results=tuple(results),
                )
                # Progress is polled by people: a few writes a second are plenty.
                moment = time.monotonic()
                if event.kind != "check_started" or moment - last_save > 0.25:
                    self._save(current)
                    last_save = moment

        outcome: dict[str, Any]
        try:
            report = run(options, waivers=waivers, on_progress=progress)
            document = report_to_dict(report)
            with lock:
                current = replace(
                    current,
                    status="finished",
                    finished_at=report.finished_at,
                    report=document,
                    exit_code=report.exit_code,
                    running=(),
                    done=current.total,
                )
            outcome = {"exit_code": report.exit_code, "counts": report.counts()}
        except Exception as exc:
            with lock:
                current = replace(
                    current,
                    status="crashed",
                    finished_at=now_iso(),
                    error=f"{type(exc).__name__}: {exc}",
                    running=(),
                )
            outcome = {"error": current.error}
        try:
            self._save(current)
            record_only(
                services.db,
                principal,
                Action.ACCEPTANCE_RUN_FINISH,
                f"acceptance-run:{state.id}",
                {"status": current.status, **outcome},
                request_id=request_id,
            )
        finally:
            services.kv.delete_if_equals(_LOCK_KEY, state.id.encode())
            services.db.close_thread()
            services.kv.close_thread()
