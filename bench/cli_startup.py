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


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_walls(commands: dict[str, list[str]], env: dict[str, str]) -> dict[str, float]:
    """Median wall time of each command, the commands interleaved run by run so that background
    load on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(RUNS):
        for name, cmd in commands.items():
            times[name].append(wall(cmd, env))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TUNDRA_HOME": tmp, "TUNDRA_PASSWORD_PROFILE": "test"}
        # Measure an installation as operators have it: with compiled bytecode (pip compiles
        # site-packages at install; an editable checkout compiles on first import unless told
        # not to).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("TUNDRA_DATABASE_URL", None)
        env.pop("TUNDRA_VALKEY_URL", None)
        subprocess.run(
            [TUNDRA, "init", "--generate-password"], env=env, check=True, capture_output=True
        )
        for i in range(20):
            subprocess.run(
                [TUNDRA, "server", "add", f"web-{i}", "--address", f"203.0.113.{i + 1}"],
                env=env,
                check=True,
                capture_output=True,
            )
        # Warm the page cache and bytecode before timing.
        subprocess.run(
            [TUNDRA, "server", "list", "--json"], env=env, check=True, capture_output=True
        )
        medians = median_walls(
            {
                "baseline": [sys.executable, "-c", "import typer"],
                "version": [TUNDRA, "--version"],
                "server_list": [TUNDRA, "server", "list", "--json"],
            },
            env,
        )
        baseline, version = medians["baseline"], medians["version"]
        server_list = medians["server_list"]
    print(
        json.dumps(
            {
                "benchmark": "cli_startup",
                "runs": RUNS,
                "baseline_import_typer_s": round(baseline, 4),
                "tundra_version_s": round(version, 4),
                "tundra_server_list_json_s": round(server_list, 4),
                "ratio_version": round(version / baseline, 3),
                "ratio_server_list_json": round(server_list / baseline, 3),
                "aim_ratio_at_most": 1.3,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
