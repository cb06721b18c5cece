"""Network namespaces as "outside" hosts for exposure tests (root only; CI runs as root).

Each :class:`OutsideHost` is a namespace joined to this host by its own veth pair on a /30 from
the documentation range 198.51.100.0/24: the host side is ``host_ip``, the namespace side
``ip``. Everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"


def require_netns() -> None:
    """Skip (fail in CI) unless this process can create network namespaces."""
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "iproute2 (`ip`) is not installed"
    if reason:
        if REQUIRE:
            pytest.fail(f"{reason}; TUNDRA_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
        pytest.skip(reason)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class OutsideHost:
    name: str
    ip: str
    host_ip: str

    def run(
        self, argv: list[str], *, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )


@contextmanager
def outside_host(index: int) -> Iterator[OutsideHost]:
    """Namespace number ``index`` (0–60) on 198.51.100.(4*index)/30."""
    require_netns()
    tag = f"{os.getpid() % 10000}x{index}"
    name, host_if, ns_if = f"tnd{tag}", f"tndh{tag}", f"tndn{tag}"
    base = 4 * index
    host_ip, ns_ip = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    with ExitStack() as cleanup:
        _ip("netns", "add", name)
        cleanup.callback(subprocess.run, ["ip", "netns", "del", name], check=False)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        cleanup.callback(
            subprocess.run, ["ip", "link", "del", host_if], check=False, capture_output=True
        )
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield OutsideHost(name=name, ip=ns_ip, host_ip=host_ip)
