"""The committed agent-protocol stubs are exactly what grpcio-tools makes from protos/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)
    assert generated, "protoc produced nothing"
    names = {p.relative_to(tmp_path).as_posix() for p in generated}
    assert names == {
        "tundra/agent/v1/agent_pb2.py",
        "tundra/agent/v1/agent_pb2.pyi",
        "tundra/agent/v1/agent_pb2_grpc.py",
    }
    stale = [
        name
        for name in sorted(names)
        if (ROOT / name).read_bytes() != (tmp_path / name).read_bytes()
    ]
    assert not stale, f"regenerate with `python scripts/gen_protos.py`: {stale} drifted"


def test_stubs_import_and_describe_the_gateway() -> None:
    from tundra.agent.v1 import agent_pb2, agent_pb2_grpc

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"]
    assert sorted(m.name for m in service.methods) == ["Renew", "Session"]
    assert hasattr(agent_pb2_grpc, "AgentGatewayServicer")
    assert "tundra.agent.v1.agent_pb2" in sys.modules
