"""The committed gRPC stubs are exactly what `make proto` generates from the committed .proto.

Stubs are committed (not generated at build time) so every install runs the same code; this test is
what keeps them honest. It regenerates with the same command as make/proto.mk, into a temporary
directory, and compares byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = Path("proto/recsys/v1")
PROTOS = [PROTO_DIR / "recommender.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def _generate(out: Path) -> None:
    # Run from the repository root with `-I .`, as make/proto.mk does: the include path decides the
    # generated import lines (`from proto.recsys.v1 import ...`).
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *map(str, PROTOS),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"protoc failed:\n{done.stderr}"


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    _generate(tmp_path)
    problems = []
    for proto in PROTOS:
        for suffix in GENERATED_SUFFIXES:
            rel = proto.with_name(proto.stem + suffix)
            fresh, committed = tmp_path / rel, ROOT / rel
            assert fresh.exists(), f"protoc did not write {rel}"
            if not committed.exists():
                problems.append(f"{rel} is missing")
            elif committed.read_bytes() != fresh.read_bytes():
                problems.append(f"{rel} differs from a fresh generation")
    assert not problems, "; ".join(problems) + "; fix: run `make proto` and commit the result"


def test_stubs_import_as_proto_package_not_as_core_recsys() -> None:
    # The top-level `recsys` package is our core library; the stubs live under `proto.` so the two
    # never shadow each other.
    from proto.recsys.v1 import recommender_pb2, recommender_pb2_grpc

    assert recommender_pb2.DESCRIPTOR.package == "recsys.v1"
    services = recommender_pb2.DESCRIPTOR.services_by_name
    assert services["Recommender"].full_name == "recsys.v1.Recommender"
    grpc_src = (ROOT / PROTO_DIR / "recommender_pb2_grpc.py").read_text()
    assert "from proto.recsys.v1 import recommender_pb2" in grpc_src
    assert hasattr(recommender_pb2_grpc, "add_RecommenderServicer_to_server")
