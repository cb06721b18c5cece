"""Machine-readable reports of an acceptance run: JSON (stable schema), JUnit XML, SARIF 2.1.0.

The rich table and the live progress display are the CLI's (rich lives in front ends).
"""

from __future__ import annotations
