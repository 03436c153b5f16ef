"""Packaging: one distribution, everything under the pixelrpc namespace, no stray top-level packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("pixelrpc-*.whl")
    return path


def test_wheel_installs_only_the_pixelrpc_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"pixelrpc"}, top
    for stray in ("models", "services", "clients", "protos"):
        assert not any(n.startswith(stray + "/") for n in names)
    assert "pixelrpc/__init__.py" not in names, "pixelrpc must stay an implicit namespace package"
    for required in ("pixelrpc/models/registry/store.py", "pixelrpc/services/server.py",
                     "pixelrpc/cli/__init__.py", "pixelrpc/v1/common_pb2.py",
                     "pixelrpc/v1/common.proto"):
        assert required in names


def test_console_script_and_imports_from_outside_the_repo(tmp_path):
    code = ("import importlib.util, pixelrpc.models, pixelrpc.services, pixelrpc.clients, pixelrpc.v1;"
            "print([importlib.util.find_spec(n) is None for n in ('models','services','clients','protos')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[True, True, True, True]"
    entry = subprocess.run([sys.executable, "-m", "pixelrpc.cli", "--help"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert entry.returncode == 0 and "serve" in entry.stdout


def test_domain_code_never_imports_grpc():
    offenders = []
    for path in (REPO / "models").rglob("*.py"):
        text = path.read_text()
        if "import grpc" in text or "pixelrpc.v1" in text or "from grpc" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_generated_code_matches_protos():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "check_protos.py")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
