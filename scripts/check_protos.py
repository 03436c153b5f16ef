"""Fail when the committed generated code differs from what protos/ produce (drift check)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"
GEN_DIR = PROTO_DIR / "pixelrpc" / "v1"


def main() -> int:
    protos = sorted(GEN_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
               f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
               *[str(p.relative_to(PROTO_DIR)) for p in protos]]
        subprocess.run(cmd, check=True, cwd=PROTO_DIR)
        fresh = out / "pixelrpc" / "v1"
        expected = sorted(p.name for p in fresh.iterdir() if p.is_file())
        committed = sorted(p.name for p in GEN_DIR.iterdir() if p.is_file() and "_pb2" in p.name)
        problems = []
        for name in sorted(set(expected) | set(committed)):
            if name not in committed:
                problems.append(f"missing generated file {name}")
            elif name not in expected:
                problems.append(f"stale generated file {name} (no .proto produces it)")
            elif not filecmp.cmp(fresh / name, GEN_DIR / name, shallow=False):
                problems.append(f"{name} differs from what its .proto generates")
        if problems:
            print("generated code drifted from protos/ — run `make protos` and commit:", file=sys.stderr)
            for p in problems:
                print("  -", p, file=sys.stderr)
            return 1
    print(f"generated code matches {len(protos)} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
