"""CLI start-up: wall time of `tundra --version` and `tundra server list --json`.

Baseline, measured in the same run: `python -c "import typer"` (the floor any typer CLI pays).
Prints JSON with medians and ratios; the aim is a ratio of at most 1.3.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "21"))
BIN = Path(sys.executable).parent
TUNDRA = str(BIN / "tundra")


def median_wall(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUNDRA_HOME": tmp, "TUNDRA_PASSWORD_PROFILE": "test"}
        # Measure an installation as operators have it: with compiled bytecode (pip compiles
        # site-packages at install; an editable checkout compiles on first import unless told
        # not to).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("TUNDRA_DATABASE_URL", None)
        env.pop("TUNDRA_VALKEY_URL", None)
        subprocess.run([TUNDRA, "init", "--generate-password"], env=env, check=True,
                       capture_output=True)
        for i in range(20):
            subprocess.run([TUNDRA, "server", "add", f"web-{i}", "--address", f"203.0.113.{i + 1}"],
                           env=env, check=True, capture_output=True)
        # Warm the page cache and bytecode before timing.
        subprocess.run([TUNDRA, "server", "list", "--json"], env=env, check=True,
                       capture_output=True)
        baseline = median_wall([sys.executable, "-c", "import typer"], env)
        version = median_wall([TUNDRA, "--version"], env)
        server_list = median_wall([TUNDRA, "server", "list", "--json"], env)
    print(json.dumps({
        "benchmark": "cli_startup",
        "runs": RUNS,
        "baseline_import_typer_s": round(baseline, 4),
        "tundra_version_s": round(version, 4),
        "tundra_server_list_json_s": round(server_list, 4),
        "ratio_version": round(version / baseline, 3),
        "ratio_server_list_json": round(server_list / baseline, 3),
        "aim_ratio_at_most": 1.3,
    }, indent=2))


if __name__ == "__main__":
    main()
