"""Write docs/settings.md from the declarations in tundra/core/settings.py (`make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

from tundra.core.settings import SETTINGS

INTRO = """# Settings

Every setting is declared once in `tundra/core/settings.py`; this page is generated from those
declarations (`make docs`) and a test fails when the two differ. Values come from, lowest
precedence first: the default, `/etc/tundra/tundra.toml`, `$TUNDRA_HOME/tundra.toml`, then the
environment variable. An unknown key in a settings file is an error: a typo must not fall back to
a default silently.

```toml
# $TUNDRA_HOME/tundra.toml
database_url = "postgresql://tundra@127.0.0.1/tundra"
valkey_url = "redis://127.0.0.1:6379/0"
```

| setting | variable | type | default | what it does |
|---|---|---|---|---|
"""


def render() -> str:
    rows = []
    for s in SETTINGS:
        kind = {str: "text", int: "integer"}.get(s.type, "boolean")  # type: ignore[call-overload]
        if s.default is None:
            default = "(see text)"
        elif s.default == "":
            default = "empty"
        else:
            default = f"`{str(s.default).lower() if isinstance(s.default, bool) else s.default}`"
        rows.append(f"| `{s.name}` | `{s.env}` | {kind} | {default} | {s.help} |")
    return INTRO + "\n".join(rows) + "\n"


if __name__ == "__main__":
    target = Path(__file__).parents[1] / "docs" / "settings.md"
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
