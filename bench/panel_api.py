"""Authenticated ``GET /api/v1/servers`` requests/s through the real ``tundra serve``.

Baseline, measured in the same run: a bare Starlette app with one JSON route, served by the same
uvicorn settings and the same TLS 1.3 context (certificate, key, X25519) in its own process,
serving the same 10-server JSON. The load comes from a separate client process: CONNECTIONS
keep-alive TLS connections, one thread each. Both servers run at once and are driven in turn,
ROUNDS short rounds each (SECONDS in total per server, after a warm-up round), so background load
on the machine hits both alike. The ratio is tundra's requests/s over the baseline's (aim
>= 0.5). Tundra runs on the embedded default (SQLite), access log on.

Usage: ``.venv/bin/python bench/panel_api.py`` (about 25 s). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
WARMUP = 1.0
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, ca: Path, process: subprocess.Popen[bytes], path: str = "/healthz",
             timeout: float = 60) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            .encode())
                if tls.recv(64).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not come up")


def tundra_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    env.update(TUNDRA_HOME=str(home), TUNDRA_PASSWORD_PROFILE="test",
               TUNDRA_PANEL_LISTEN=f"127.0.0.1:{port}", TUNDRA_REDIRECT_LISTEN="",
               TUNDRA_GATEWAY_LISTEN="",
               TUNDRA_PUBLIC_HTTPS_PORT=str(port))
    return env


def start_tundra(home: Path, *, extra_env: dict[str, str] | None = None,
                 log: Path | None = None) -> tuple[subprocess.Popen[bytes], int, dict[str, Any]]:
    """Initialise ``home`` if needed and start ``tundra serve``; (process, port, init report)."""
    port = free_port()
    env = {**tundra_env(home, port), **(extra_env or {})}
    report: dict[str, Any] = {}
    if not (home / "master.key").exists():
        init = subprocess.run([sys.executable, "-m", "tundra", "init", "--generate-password",
                               "--json"], env=env, capture_output=True, text=True, check=True)
        report = json.loads(init.stdout)
    out = (log or Path(os.devnull)).open("wb")
    process = subprocess.Popen([sys.executable, "-m", "tundra", "serve"], env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    out.close()
    wait_for(port, home / "tls" / "ca.crt", process)
    return process, port, report


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the baseline server (run as: panel_api.py --baseline PORT CERT KEY) -------------------------

def serve_baseline(port: int, cert: str, key: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tundra.panel.server import GRACE_SECONDS
    from tundra.panel.tls import server_context

    servers = [{"id": f"{i:032x}", "name": f"web-{i}", "address": f"203.0.113.{i + 1}",
                "tags": [], "status": "pending", "created_at": "2025-01-01T00:00:00.000000Z",
                "updated_at": "2025-01-01T00:00:00.000000Z"} for i in range(10)]

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse({"servers": servers})

    app = Starlette(routes=[Route("/api/v1/servers", listing), Route("/healthz", listing)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            server_header=False, proxy_headers=False, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=GRACE_SECONDS)
    config.load()
    config.ssl = server_context(Path(cert), Path(key))
    uvicorn.Server(config).run()


# --- the load (run as: BENCH_TOKEN=… panel_api.py --load CA PORT:PID [PORT:PID…]) ------------

def _exchange(tls: ssl.SSLSocket, request: bytes, buffer: bytes) -> tuple[bool, bytes]:
    """One keep-alive request/response; (status was 200, bytes left over)."""
    tls.sendall(request)
    while b"\r\n\r\n" not in buffer:
        buffer += tls.recv(65536)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buffer) < length:
        buffer += tls.recv(65536)
    return head.startswith(b"HTTP/1.1 200"), buffer[length:]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(ca: str, targets: list[tuple[int, int]], token: str) -> dict[str, Any]:
    """Drive each server in turn, ROUNDS times, CONNECTIONS connections at once.

    Interleaving the rounds exposes both servers to the same background load (other work on
    the machine), so the ratio stays meaningful on a busy host.
    """
    request = (f"GET /api/v1/servers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    context = ssl.create_default_context(cafile=ca)
    results: dict[int, dict[str, Any]] = {p: {"requests": 0, "errors": 0, "seconds": 0.0,
                                              "cpu": 0.0, "rounds": []} for p, _ in targets}
    round_seconds = SECONDS / ROUNDS
    for round_index in range(ROUNDS + 1):  # round 0 warms up every server
        for port, pid in targets:
            counts = [0] * CONNECTIONS
            errors = [0] * CONNECTIONS
            stop = threading.Event()

            def worker(index: int, port: int = port, counts: list[int] = counts,
                       errors: list[int] = errors, stop: threading.Event = stop) -> None:
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    buffer = b""
                    while not stop.is_set():
                        ok, buffer = _exchange(tls, request, buffer)
                        counts[index] += 1
                        errors[index] += 0 if ok else 1

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONNECTIONS)]
            for thread in threads:
                thread.start()
            time.sleep(0.2)  # connections open and handshakes done before counting
            before, cpu_before = sum(counts), cpu_seconds(pid)
            start = time.perf_counter()
            time.sleep(WARMUP if round_index == 0 else round_seconds)
            done, cpu = sum(counts) - before, cpu_seconds(pid) - cpu_before
            elapsed = time.perf_counter() - start
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            if round_index:
                result = results[port]
                result["requests"] += done
                result["errors"] += sum(errors)
                result["seconds"] += elapsed
                result["cpu"] += cpu
                result["rounds"].append(done / elapsed)
    for result in results.values():
        result["rps"] = result["requests"] / result["seconds"]
        result["server_cpu_us_per_request"] = result["cpu"] / result["requests"] * 1e6
    return {str(port): result for port, result in results.items()}


def run_load(ca: Path, targets: list[tuple[int, int]], token: str) -> dict[str, Any]:
    # The token goes through the environment, not the command line (visible in `ps`).
    out = subprocess.run([sys.executable, __file__, "--load", str(ca),
                          *(f"{port}:{pid}" for port, pid in targets)],
                         env={**os.environ, "BENCH_TOKEN": token}, capture_output=True,
                         text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        process, port, _ = start_tundra(home, log=Path(tmp) / "serve.log")
        baseline: subprocess.Popen[bytes] | None = None
        try:
            from tundra.core.principal import SYSTEM
            from tundra.core.services import Services
            from tundra.core.settings import load_settings

            services = Services(load_settings(environ=tundra_env(home, port)))
            for i in range(10):
                services.servers.add(SYSTEM, name=f"web-{i}", address=f"203.0.113.{i + 1}")
            admin = services.users.list()[0].as_principal()
            token = services.tokens.create(admin, name="bench", scopes=["servers:read"]).plaintext
            cert, key = services.pki.panel_cert_path, services.pki.panel_key_path
            ca = services.pki.ca_cert_path
            services.close()
            base_port = free_port()
            baseline = subprocess.Popen([sys.executable, __file__, "--baseline", str(base_port),
                                         str(cert), str(key)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            wait_for(base_port, ca, baseline)
            results = run_load(ca, [(port, process.pid), (base_port, baseline.pid)], token)
        finally:
            stop(process)
            if baseline is not None:
                stop(baseline)
    tundra_result, baseline_result = results[str(port)], results[str(base_port)]
    ratios = sorted(t / b for t, b in zip(tundra_result["rounds"], baseline_result["rounds"],
                                          strict=True))
    print(json.dumps({
        "benchmark": "panel_api",
        "what": "authenticated GET /api/v1/servers (10 servers) via tundra serve, TLS 1.3",
        "connections": CONNECTIONS,
        "rounds": ROUNDS,
        "seconds_each": SECONDS,
        "tundra_rps": round(tundra_result["rps"], 1),
        "tundra_errors": tundra_result["errors"],
        "baseline": "bare Starlette JSON route, same uvicorn and TLS settings, same run",
        "baseline_rps": round(baseline_result["rps"], 1),
        "baseline_errors": baseline_result["errors"],
        "ratio": round(tundra_result["rps"] / baseline_result["rps"], 3),
        "tundra_server_cpu_us_per_request": round(tundra_result["server_cpu_us_per_request"]),
        "baseline_server_cpu_us_per_request": round(
            baseline_result["server_cpu_us_per_request"]),
        "ratio_per_round_min_median_max": [round(ratios[0], 3),
                                           round(ratios[len(ratios) // 2], 3),
                                           round(ratios[-1], 3)],
        "aim_ratio_at_least": 0.5,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--load":
        targets = [(int(p), int(q)) for p, _, q in (a.partition(":") for a in sys.argv[3:])]
        print(json.dumps(load(sys.argv[2], targets, os.environ["BENCH_TOKEN"])))
    else:
        main()
