"""Wall and CPU time of a full local ``tundra acceptance run`` against a real ``tundra serve``.

The deployment is the one of tests/e2e/test_acceptance_e2e.py (written out again here: bench/
does not import from tests/): ``tundra init``, an acceptance account, ``tundra serve`` on the
embedded stores, an enrolled and connected agent (``tundra agent run``) and a second enrolled
identity for ``--agent-cert/--agent-key``. As root, an outside network namespace (veth pair on
198.51.100.188/30) is the ``--outside-probe`` vantage point and the panel listens on this host's
side of it; otherwise the panel is on 127.0.0.1 and NX-02/AG-05 probe from this host.

Measured, every check of the catalogue selected and every input given:

- ``run``: BENCH_REPEAT runs of ``tundra acceptance run --local … --format json`` as a process.
  Wall time; CPU time (user + system) of that process and the probes it starts
  (``resource.getrusage(RUSAGE_CHILDREN)`` before and after: children are counted once reaped);
  per section the slowest check (checks run concurrently, so the slowest check bounds its
  section) and the slowest checks overall; how many HTTPS requests the panel served (its
  request log) and the CPU ``tundra serve`` spent meanwhile (``/proc/PID/stat``). CPU well
  below wall means the run waits (network, handshakes, the panel's work), which is the aim:
  under 5 s, mostly waiting. On a machine with few cores the runner and the panel share them.
- ``judge``: one run with ``--judge`` (the public scanners that are installed): wall time, the
  judge's own duration, and each scanner's status and duration — which ran and which did not.
- ``baseline`` (same run, same machine), two fixed costs a run cannot avoid:
  ``cli_startup`` is ``tundra acceptance list --json`` — interpreter start and the imports of
  the CLI and of every check module, with nothing run: paid by every run (``tundra --version``
  would not do: it answers before importing anything);
  ``serial_requests`` replays as many HTTPS requests as the panel logged during one run,
  serially from this process, each a fresh TLS 1.3 handshake + ``GET /healthz`` (the cheapest
  route): the network and TLS cost of the run's traffic with no concurrency and no checking.
  A run whose wall time is near ``cli_startup`` plus a fraction of ``serial_requests`` is spent
  on the network, not on its own logic.

Usage: ``.venv/bin/python bench/acceptance_run.py`` (about 20 s with the judge).
Environment: BENCH_REPEAT (3), BENCH_JUDGE (1; 0 skips the judge run).
Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
JUDGE = os.environ.get("BENCH_JUDGE", "1") != "0"
TUNDRA = [sys.executable, "-m", "tundra"]
USER = "accept"
PASSWORD_ENV = "BENCH_ACCEPTANCE_PASSWORD"
TOKEN_RE = re.compile(r"tjn1\.[a-z2-7]+\.[0-9a-f]{64}")
#: The namespace's /30 (TEST-NET-2, index 47 of tests/integration/netnshelpers.py's scheme).
HOST_IP, NS_IP = "198.51.100.189", "198.51.100.190"
ANY = "0.0.0.0"  # noqa: S104 - the gateway listens everywhere, as deployed


def tundra(
    env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*TUNDRA, *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done


def must(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise SystemExit(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wildcard_listeners() -> list[str]:
    """This host's wildcard TCP listeners (``/proc/net/tcp{,6}``), before tundra starts."""
    found = set()
    for name, v6 in (("tcp", False), ("tcp6", True)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path("/proc/net", name).read_text().splitlines()[1:]:
                fields = line.split()
                address, _, port = fields[1].partition(":")
                if fields[3] == "0A" and int(address, 16) == 0:
                    found.add(f"[::]:{int(port, 16)}" if v6 else f"0.0.0.0:{int(port, 16)}")
    return sorted(found)


@contextlib.contextmanager
def outside_namespace() -> Iterator[str | None]:
    """A namespace joined by a veth pair (root only); its name, or None when not possible."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    tag = f"{os.getpid() % 10000}b"
    name, host_if, ns_if = f"tndbench{tag}", f"tndbh{tag}", f"tndbn{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    try:
        ip("netns", "add", name)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", name)
        ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{NS_IP}/30", "dev", ns_if)
        ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class Plane:
    """The running deployment and what the runs need of it."""

    def __init__(self, root: Path, host: str) -> None:
        self.root, self.host = root, host
        self.port, self.redirect_port = free_port(host), free_port(host)
        self.gateway_port = free_port(ANY)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
        self.env.update(
            TUNDRA_HOME=str(root / "home"),
            TUNDRA_PASSWORD_PROFILE="test",
            TUNDRA_PANEL_LISTEN=f"{host}:{self.port}",
            TUNDRA_REDIRECT_LISTEN=f"{host}:{self.redirect_port}",
            TUNDRA_PUBLIC_HTTPS_PORT=str(self.port),
            TUNDRA_PANEL_HOSTNAMES=host,
            TUNDRA_GATEWAY_LISTEN=f"{ANY}:{self.gateway_port}",
            TUNDRA_GATEWAY_ADDRESS=f"{host}:{self.gateway_port}",
        )
        self.password = secrets.token_urlsafe(18)
        self.serve_log = root / "serve.log"
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def ca_file(self) -> Path:
        return self.root / "home" / "tls" / "ca.crt"

    def tls_get(self, context: ssl.SSLContext) -> bool:
        with (
            socket.create_connection((self.host, self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=self.host) as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(64).startswith(b"HTTP/1.1 200")

    def healthy(self) -> bool:
        try:
            return self.tls_get(ssl.create_default_context(cafile=str(self.ca_file)))
        except OSError:
            return False

    def enroll(self, name: str) -> Path:
        added = must(tundra(self.env, "server", "add", name, "--address", self.host), "server add")
        token = TOKEN_RE.search(added.stdout + added.stderr)
        if token is None:
            raise SystemExit(f"no join token:\n{added.stdout}{added.stderr}")
        bare = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
        config, state = self.root / name / "agent.toml", self.root / name / "state"
        argv = ["agent", "enroll", "--url", f"https://{self.host}:{self.port}"]
        argv += ["--config", str(config), "--state-dir", str(state)]
        must(tundra({**bare, "TUNDRA_JOIN_TOKEN": token[0]}, *argv), f"enroll {name}")
        return config

    def start(self) -> None:
        must(tundra(self.env, "init", "--generate-password", "--json"), "tundra init")
        argv = ["user", "add", USER, "--acceptance", "--password-stdin"]
        must(tundra(self.env, *argv, stdin=self.password + "\n"), "user add")
        with self.serve_log.open("wb") as out:
            serve = subprocess.Popen([*TUNDRA, "serve"], env=self.env, stdout=out, stderr=out)
        self.processes.append(serve)
        wait_for(
            lambda: (
                serve.poll() is not None
                or (self.healthy() and tcp_open(self.host, self.gateway_port))
            ),
            "tundra serve",
        )
        if serve.poll() is not None:
            raise SystemExit(self.serve_log.read_text())
        config = self.enroll("web-1")
        self.enroll("acceptance-probe")
        bare = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
        agent_log = self.root / "agent.log"
        with agent_log.open("wb") as err:
            agent = subprocess.Popen(
                [*TUNDRA, "agent", "run", "--config", str(config)],
                env=bare,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.processes.append(agent)
        wait_for(lambda: b'"connected"' in agent_log.read_bytes(), "the agent session")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)

    def panel_cpu(self) -> float:
        """CPU seconds `tundra serve` has used so far (/proc/PID/stat utime + stime)."""
        fields = Path(f"/proc/{self.processes[0].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def requests_logged(self) -> int:
        return sum(
            1 for line in self.serve_log.read_text("utf-8", "replace").splitlines()
            if line.startswith("{") and '"method"' in line
        )  # fmt: skip

    def acceptance(
        self, *, allowed: list[str], namespace: str | None, extra: tuple[str, ...] = ()
    ) -> tuple[dict[str, Any], float, float, int]:
        """One run: (report, wall seconds, CPU seconds of the process and its children, exit)."""
        state = self.root / "acceptance-probe" / "state"
        argv = ["acceptance", "run", "--url", f"https://{self.host}:{self.port}", "--local"]
        argv += ["--ca-file", str(self.ca_file), "--user", USER, "--password-env", PASSWORD_ENV]
        argv += ["--agent-cert", str(state / "agent.crt"), "--agent-key", str(state / "agent.key")]
        argv += ["--gateway", f"{self.host}:{self.gateway_port}", "--format", "json"]
        argv += ["--service-user", pwd_name()]
        if namespace:
            argv += ["--outside-probe", f"ip netns exec {namespace}"]
        for listener in allowed:
            argv += ["--allow-listener", listener]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = tundra({**self.env, PASSWORD_ENV: self.password}, *argv, *extra)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            raise SystemExit(f"no report (exit {done.returncode}):\n{done.stderr}") from None
        return report, wall, cpu, done.returncode


def pwd_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def sections(report: dict[str, Any]) -> dict[str, int]:
    slowest: dict[str, int] = {}
    for check in report["checks"]:
        section = check["section"]
        slowest[section] = max(slowest.get(section, 0), int(check["duration_ms"]))
    return slowest


def cli_startup() -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([*TUNDRA, "acceptance", "list", "--json"], capture_output=True, check=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return {
        "wall_s": round(statistics.median(walls), 3),
        "cpu_s": round(statistics.median(cpus), 3),
    }


def serial_requests(plane: Plane, count: int) -> dict[str, float]:
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(count):
        if not plane.tls_get(context):
            raise SystemExit("GET /healthz failed")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"requests": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def main() -> None:
    allowed = wildcard_listeners()
    with (
        tempfile.TemporaryDirectory(prefix="tundra-bench-acceptance-") as tmp,
        outside_namespace() as namespace,
    ):
        plane = Plane(Path(tmp), HOST_IP if namespace else "127.0.0.1")
        try:
            plane.start()
            runs = []
            for _ in range(REPEAT):
                logged, panel = plane.requests_logged(), plane.panel_cpu()
                report, wall, cpu, code = plane.acceptance(allowed=allowed, namespace=namespace)
                panel = plane.panel_cpu() - panel
                runs.append((report, wall, cpu, code, plane.requests_logged() - logged, panel))
            last = runs[-1][0]
            requests = runs[-1][4]
            judge = None
            if JUDGE:
                report, wall, cpu, code = plane.acceptance(
                    allowed=allowed, namespace=namespace, extra=("--judge",)
                )
                verdict = report.get("judge") or {}
                scanners = verdict.get("scanners", [])
                judge = {
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "exit_code": code,
                    "judge_ms": verdict.get("duration_ms"),
                    "tundra_checks_ms": max(int(c["duration_ms"]) for c in report["checks"]),
                    "scanners": {
                        s["name"]: {"status": s["status"], "duration_ms": s["duration_ms"]}
                        for s in scanners
                    },
                    "ran": [s["name"] for s in scanners if s["status"] == "ran"],
                    "not_run": [s["name"] for s in scanners if s["status"] != "ran"],
                    "agreement": verdict.get("counts"),
                }
            baseline = {
                "cli_startup": cli_startup(),
                "serial_requests": serial_requests(plane, requests),
            }
        finally:
            plane.stop()
    walls = [r[1] for r in runs]
    cpus = [r[2] for r in runs]
    statuses: dict[str, int] = {}
    for check in last["checks"]:
        statuses[check["status"]] = statuses.get(check["status"], 0) + 1
    slowest = sorted(last["checks"], key=lambda c: -int(c["duration_ms"]))[:5]
    print(
        json.dumps(
            {
                "benchmark": "acceptance_run",
                "setup": {
                    "checks": len(last["checks"]),
                    "outside_probe": namespace is not None,
                    "panel": f"https://{plane.host}:{plane.port}",
                    "cpus": os.cpu_count(),
                },
                "run": {
                    "repeat": REPEAT,
                    "wall_s": [round(w, 3) for w in walls],
                    "wall_s_median": round(statistics.median(walls), 3),
                    "cpu_s": [round(c, 3) for c in cpus],
                    "cpu_s_median": round(statistics.median(cpus), 3),
                    "cpu_per_wall": round(statistics.median(cpus) / statistics.median(walls), 2),
                    "panel_cpu_s": [round(r[5], 3) for r in runs],
                    "exit_codes": [r[3] for r in runs],
                    "statuses": statuses,
                    "not_passed": {
                        c["id"]: f"{c['status']}: {c['summary']}"[:160]
                        for c in last["checks"]
                        if c["status"] != "pass"
                    },
                    "section_max_ms": sections(last),
                    "slowest_ms": {c["id"]: c["duration_ms"] for c in slowest},
                    "panel_requests": requests,
                },
                "judge": judge,
                "baseline": baseline,
                # The run's CPU beyond what starting the CLI costs, and its share of the wall time
                # beyond start-up: how much of the run is the checks' own computing.
                "derived": {
                    "cpu_beyond_startup_s": round(
                        statistics.median(cpus) - baseline["cli_startup"]["cpu_s"], 3
                    ),
                    "cpu_per_wall_beyond_startup": round(
                        (statistics.median(cpus) - baseline["cli_startup"]["cpu_s"])
                        / (statistics.median(walls) - baseline["cli_startup"]["wall_s"]),
                        2,
                    ),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
