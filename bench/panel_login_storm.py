"""``/healthz`` latency while 50 logins are hashed at once, and the server's peak memory.

``tundra serve`` runs with the PRODUCTION Argon2id parameters (64 MiB, t=3, p=1) and the default
hash semaphore (``hash_concurrency`` = 4). STORM clients, each on its own TLS connection, do what
a browser does: ``GET /login`` (pre-session and CSRF cookies, the form's CSRF token), then
``POST /login`` with the right password of a non-admin user, all released at the same instant.
Meanwhile a separate process asks ``GET /healthz`` on a keep-alive connection every few
milliseconds and records each latency.

Baselines, measured in the same run: the same ``/healthz`` probe against the idle server (its
p99, and the ratio of the storm's p99 to it), and the server's resident memory before the storm
(peak memory is VmHWM from /proc/PID/status; the semaphore bounds it at about baseline + 4 x 64
MiB). Aim: p99 of /healthz under 100 ms during the storm.

Usage: ``.venv/bin/python bench/panel_login_storm.py`` (about 30 s). Prints one JSON object.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from panel_api import start_tundra, stop, tundra_env

STORM = int(os.environ.get("BENCH_STORM", "50"))
USER, PASSWORD = "storm", "a long storm password 1"
IDLE_SECONDS = 3.0
PROBE_INTERVAL = 0.005
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so the peak is the storm's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- the probe (run as: [BENCH_TOKEN=…] panel_login_storm.py --probe PORT CA SECONDS PATH) -------

def probe(port: int, ca: str, seconds: float, path: str) -> list[float]:
    """Latencies (ms) of ``path`` on one keep-alive connection, until ``seconds`` pass or a
    line arrives on standard input."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    token = os.environ.get("BENCH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
        time.sleep(PROBE_INTERVAL)
    conn.close()
    return latencies


def start_probe(port: int, ca: Path, seconds: float, path: str = "/healthz",
                token: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "BENCH_TOKEN": token} if token else None
    return subprocess.Popen([sys.executable, __file__, "--probe", str(port), str(ca),
                             str(seconds), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def finish_probe(process: subprocess.Popen[str]) -> list[float]:
    out, _ = process.communicate("stop\n", timeout=60)
    latencies: list[float] = json.loads(out)
    return latencies


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"samples": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(at(0.99), 2), "max_ms": round(ordered[-1], 2)}


# --- the storm ----------------------------------------------------------------------------------

def login(port: int, context: ssl.SSLContext, go: threading.Event) -> tuple[int, float]:
    """One browser-like login; (final status, seconds from the POST to its answer)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
    conn.request("GET", "/login")
    response = conn.getresponse()
    page = response.read().decode()
    cookies = "; ".join(h.split(";", 1)[0] for k, h in response.getheaders()
                        if k.lower() == "set-cookie")
    match = _CSRF.search(page)
    if match is None:
        raise RuntimeError(f"no CSRF token in the login page ({response.status})")
    body = (f"username={USER}&password={PASSWORD.replace(' ', '+')}"
            f"&csrf_token={match[1]}&next=%2F").encode()
    go.wait()
    start = time.perf_counter()
    conn.request("POST", "/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies,
        "Origin": f"https://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    answer = conn.getresponse()
    answer.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return answer.status, elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        production = {"TUNDRA_PASSWORD_PROFILE": "production"}
        process, port, init = start_tundra(home, extra_env=production,
                                           log=Path(tmp) / "serve.log")
        admin_name = init["admin"]
        try:
            from tundra.core.principal import SYSTEM
            from tundra.core.services import Services
            from tundra.core.settings import load_settings

            settings = load_settings(environ={**tundra_env(home, port), **production})
            services = Services(settings)
            services.users.add(SYSTEM, name=USER, password=PASSWORD)
            parameters = services.passwords.parameters
            admin = services.users.get(admin_name).as_principal()
            token = services.tokens.create(admin, name="storm", scopes=["servers:read"]).plaintext
            ca = services.pki.ca_cert_path
            services.close()
            context = ssl.create_default_context(cafile=str(ca))

            # Baseline: the same probe against the idle server.
            idle = finish_probe_after(start_probe(port, ca, IDLE_SECONDS), IDLE_SECONDS)
            before = memory(process.pid)
            peak_reset = reset_peak(process.pid)

            # The storm: every client fetches its form and cookies, then all post at once.
            go = threading.Event()
            results: list[tuple[int, float]] = []
            errors: list[str] = []

            def client() -> None:
                try:
                    results.append(login(port, context, go))
                except Exception as exc:  # counted and reported
                    errors.append(repr(exc))

            threads = [threading.Thread(target=client) for _ in range(STORM)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            storm_probe = start_probe(port, ca, 120.0)
            api_probe = start_probe(port, ca, 120.0, "/api/v1/servers", token)
            time.sleep(0.3)
            started = time.perf_counter()
            go.set()
            peak_rss = 0
            while any(t.is_alive() for t in threads):
                peak_rss = max(peak_rss, memory(process.pid)["VmRSS"])
                time.sleep(0.02)
            storm_seconds = time.perf_counter() - started
            during = finish_probe(storm_probe)
            api_during = finish_probe(api_probe)
            after = memory(process.pid)
        finally:
            stop(process)

    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    storm = percentiles(during)
    idle_stats = percentiles(idle)
    mib = 1024
    print(json.dumps({
        "benchmark": "panel_login_storm",
        "logins": STORM,
        "argon2": {"memory_kib": parameters.memory_cost, "time_cost": parameters.time_cost,
                   "parallelism": parameters.parallelism},
        "hash_concurrency": settings.hash_concurrency,
        "login_statuses": statuses,
        "login_errors": errors[:3],
        "storm_seconds": round(storm_seconds, 2),
        "login_latency": percentiles([seconds * 1000 for _, seconds in results]),
        "healthz_during_storm": storm,
        "healthz_baseline_idle": idle_stats,
        "healthz_p99_ratio_to_idle": round(storm["p99_ms"] / idle_stats["p99_ms"], 2),
        "api_servers_during_storm": percentiles(api_during),
        "aim_healthz_p99_ms_below": 100,
        "rss_before_mib": round(before["VmRSS"] / mib, 1),
        "rss_peak_mib": round((after["VmHWM"] if peak_reset else peak_rss) / mib, 1),
        "rss_peak_source": "VmHWM (reset before the storm)" if peak_reset else "VmRSS sampled",
        "rss_growth_mib": round(((after["VmHWM"] if peak_reset else peak_rss)
                                 - before["VmRSS"]) / mib, 1),
        # What the semaphore bounds: Argon2's working memory, hash_concurrency x memory_cost.
        # The rest of the growth is the 50 connections, sessions and worker threads.
        "argon2_memory_bound_mib": settings.hash_concurrency * parameters.memory_cost // mib,
    }, indent=2))


def finish_probe_after(process: subprocess.Popen[str], seconds: float) -> list[float]:
    time.sleep(seconds)
    return finish_probe(process)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        print(json.dumps(probe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5])))
    else:
        main()
