"""The product: every rule, permission check and audit write lives here.

Front ends (``tundra.cli``, ``tundra.tui``, ``tundra.panel``, ``tundra.agent``) parse input,
call one core service and render the result. This package never imports them, never prints and never
prompts; an import-linter contract in pyproject.toml enforces the first rule.
"""
