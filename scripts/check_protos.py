"""Generate protos/pixelrpc/{v1,inference}/*_pb2*.py(i), or fail when the committed ones drifted (the default).

``make protos`` runs this with ``--write``; ``make check-protos`` (part of ``make test``) without it.
Both use one protoc command line, so what is committed is what the check expects.

Imports: ``google/protobuf/*.proto`` come with grpc_tools; ``google/rpc/status.proto`` (the standard
error of a CaptionStream item) comes from the installed googleapis-common-protos package, found through
its Python module, so no path of this machine ends up in the generated code.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "protos"
GEN_DIR = PROTO_DIR / "pixelrpc" / "v1"
# Every folder of generated code: the native API and the Open Inference Protocol (package inference).
GEN_DIRS = (GEN_DIR, PROTO_DIR / "pixelrpc" / "inference")


def googleapis_include() -> Path:
    """The folder holding ``google/rpc/status.proto`` (googleapis-common-protos' site-packages root)."""
    from google.rpc import status_pb2

    root = Path(status_pb2.__file__).resolve().parents[2]
    if not (root / "google" / "rpc" / "status.proto").is_file():
        raise SystemExit(f"google/rpc/status.proto not found under {root}: reinstall googleapis-common-protos")
    return root


def all_protos() -> list[Path]:
    return [p for folder in GEN_DIRS for p in sorted(folder.glob("*.proto"))]


def generate(out: Path) -> None:
    """Run protoc on every .proto of GEN_DIRS, writing under ``out``."""
    protos = all_protos()
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{googleapis_include()}",
           f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
           *[str(p.relative_to(PROTO_DIR)) for p in protos]]
    subprocess.run(cmd, check=True, cwd=PROTO_DIR)


def main(argv: list[str]) -> int:
    write = "--write" in argv
    protos = all_protos()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        problems = []
        for gen_dir in GEN_DIRS:
            fresh = out / gen_dir.relative_to(PROTO_DIR)
            expected = sorted(p.name for p in fresh.iterdir() if p.is_file())
            committed = sorted(p.name for p in gen_dir.iterdir() if p.is_file() and "_pb2" in p.name)
            if write:
                for name in committed:
                    if name not in expected:
                        (gen_dir / name).unlink()
                for name in expected:
                    shutil.copyfile(fresh / name, gen_dir / name)
                continue
            for name in sorted(set(expected) | set(committed)):
                where = f"{gen_dir.relative_to(PROTO_DIR)}/{name}"
                if name not in committed:
                    problems.append(f"missing generated file {where}")
                elif name not in expected:
                    problems.append(f"stale generated file {where} (no .proto produces it)")
                elif not filecmp.cmp(fresh / name, gen_dir / name, shallow=False):
                    problems.append(f"{where} differs from what its .proto generates")
        if write:
            print(f"generated code of {len(protos)} protos written to "
                  f"{', '.join(str(d.relative_to(ROOT)) for d in GEN_DIRS)}")
            return 0
        if problems:
            print("generated code drifted from protos/ — run `make protos` and commit:", file=sys.stderr)
            for p in problems:
                print("  -", p, file=sys.stderr)
            return 1
    print(f"generated code matches {len(protos)} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
