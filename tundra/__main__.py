"""Allow ``python -m tundra``."""

from tundra.cli.main import main

main()
