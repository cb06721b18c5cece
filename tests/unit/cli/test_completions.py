"""The completion scripts in completions/ are generated from the CLI and must not drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tundra.cli.completions import script

ROOT = Path(__file__).parents[3]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_script_matches_the_generated_one(shell: str) -> None:
    committed = (ROOT / "completions" / f"tundra.{shell}").read_text()
    assert committed == script(shell), (
        f"completions/tundra.{shell} is stale: run `make completions` and commit the result"
    )


def test_completion_protocol_lists_the_command_groups() -> None:
    env = {
        **os.environ,
        "_TUNDRA_COMPLETE": "bash_complete",
        "COMP_WORDS": "tundra ",
        "COMP_CWORD": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tundra"], env=env, capture_output=True, text=True, timeout=60
    )
    words = {line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line}
    assert {"server", "user", "token", "key", "audit", "init", "login"} <= words


def test_completion_reaches_into_lazy_groups() -> None:
    env = {
        **os.environ,
        "_TUNDRA_COMPLETE": "bash_complete",
        "COMP_WORDS": "tundra server ",
        "COMP_CWORD": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tundra"], env=env, capture_output=True, text=True, timeout=60
    )
    words = {line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line}
    assert {"add", "list", "show", "remove"} <= words
