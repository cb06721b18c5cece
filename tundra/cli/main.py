"""Entry point of the ``tundra`` command.

Start-up time matters (operators run it in loops over SSH and in CI): ``--version`` answers
before anything is imported, and every command group is imported only when it is invoked.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):
        from tundra import __version__

        sys.stdout.write(f"tundra {__version__}\n")
        return
    from tundra.cli.app import run

    run(args)
