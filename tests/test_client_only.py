"""``pip install pixelrpc`` is a client: the library and the remote CLI commands work without the server side.

A client-only install is imitated in a subprocess whose ``sitecustomize`` refuses every import that
such an install could not satisfy: anything outside the standard library and the distributions that
``[project] dependencies`` pull in (so torch, torchvision, h5py, scipy, matplotlib, safetensors,
prometheus_client, nltk, grpc_reflection: the ``serve`` extra), and ``pixelrpc.models`` /
``pixelrpc.services`` (the server side, which a wheel installs but a client must not need).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image
from server_procs import ServerProcess

SERVER_SIDE = ("pixelrpc.models", "pixelrpc.services")
HEAVY = ("torch", "torchvision", "h5py", "scipy", "matplotlib")
LIBRARY = [f"pixelrpc.{d}.{p.stem}" for d in ("clients", "common") for p in sorted((REPO / d).glob("*.py"))
           if p.stem != "__init__"]
CLI = sorted(p.stem for p in (REPO / "cli").glob("*.py") if p.stem != "__main__")

SITECUSTOMIZE = '''
import json, os, sys
from importlib.abc import MetaPathFinder

_ALLOWED = frozenset(json.loads(os.environ["PIXELRPC_CLIENT_ONLY_MODULES"]))
_SERVER_SIDE = tuple(json.loads(os.environ["PIXELRPC_CLIENT_ONLY_SERVER_SIDE"]))


class ClientOnly(MetaPathFinder):
    """Refuses what a client-only install lacks, as if it were not installed."""

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == s or fullname.startswith(s + ".") for s in _SERVER_SIDE):
            raise ModuleNotFoundError(f"client-only: {fullname} is the server side", name=fullname)
        top = fullname.partition(".")[0]
        if top in _ALLOWED or top in sys.stdlib_module_names:
            return None  # let the normal finders find it
        raise ModuleNotFoundError(f"client-only: no module named {fullname!r}", name=fullname)


sys.meta_path.insert(0, ClientOnly())
'''


def client_install_modules() -> set[str]:
    """Top-level modules of the standard dependencies' closure (what ``pip install pixelrpc`` brings)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r).name for r in project["dependencies"]]
    closure: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    modules = {top for top, dists in metadata.packages_distributions().items()
               if any(canonicalize_name(d) in closure for d in dists)}
    return modules | {"pixelrpc"}


@pytest.fixture(scope="module")
def client_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a client-only subprocess (the blocking ``sitecustomize`` on its path)."""
    folder = tmp_path_factory.mktemp("client-only")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    allowed = client_install_modules()
    assert not allowed & set(HEAVY), "a heavy package is a standard dependency of pixelrpc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELRPC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    env["PIXELRPC_CLIENT_ONLY_MODULES"] = json.dumps(sorted(allowed))
    env["PIXELRPC_CLIENT_ONLY_SERVER_SIDE"] = json.dumps(SERVER_SIDE)
    return env


def run_python(env: dict[str, str], code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_library_modules_never_import_the_server_side_or_heavy_packages():
    """Every import statement of clients/*.py and common/*.py, lazy ones inside functions included."""
    offenders = []
    for path in sorted([*(REPO / "clients").glob("*.py"), *(REPO / "common").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                if name.partition(".")[0] in HEAVY or any(name == s or name.startswith(s + ".")
                                                          for s in (*SERVER_SIDE, "pixelrpc.cli")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert offenders == []


def test_the_blocker_refuses_what_a_client_install_lacks(client_env):
    code = ("import importlib\n"
            "for name in ['torch', 'torchvision', 'h5py', 'scipy', 'matplotlib', 'safetensors',\n"
            "             'prometheus_client', 'grpc_reflection', 'pixelrpc.models.errors',\n"
            "             'pixelrpc.services.settings']:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} was importable')\n")
    out = run_python(client_env, code)
    assert out.returncode == 0, out.stdout + out.stderr


def test_library_and_cli_import_in_a_client_only_install(client_env):
    modules = [*LIBRARY, "pixelrpc.clients", "pixelrpc.common"] + \
              [f"pixelrpc.cli.{m}" for m in CLI] + ["pixelrpc.cli"]
    code = ("import importlib, json, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "from pixelrpc.cli import cli\n"
            "print(json.dumps(sorted(cli.commands)))\n")
    out = run_python(client_env, code, *modules)
    assert out.returncode == 0, out.stderr
    assert {"caption", "classify", "saliency", "fool", "dream", "style", "health", "models", "serve"} <= \
        set(json.loads(out.stdout))
    # --help of every command works too (it must not import the server side to describe itself)
    out = run_python(client_env, "import sys; from pixelrpc.cli import main; "
                                 "sys.exit(max(main([*c.split(), '--help']) for c in sys.argv[1:]))",
                     "serve", "models bootstrap", "models import", "train", "data", "caption", "style")
    assert out.returncode == 0, out.stderr


def test_a_local_command_says_it_needs_the_server_side(client_env, tmp_path):
    out = run_python(client_env, "import sys; from pixelrpc.cli import main; sys.exit(main(sys.argv[1:]))",
                     "models", "list", "--registry", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "pip install 'pixelrpc[serve]'" in out.stderr, out.stderr


# One subprocess runs every remote command through the CLI's main() and reports each exit code and
# stdout (a process per command would spend most of this test starting interpreters).
DRIVER = '''
import contextlib, io, json, sys
from pixelrpc.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-2000:]})
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "scipy", "h5py", "matplotlib")
                or m.startswith(("pixelrpc.models", "pixelrpc.services")))
print(json.dumps({"results": results, "leaked": leaked}))
'''


@pytest.fixture(scope="module")
def suite(quick_bootstrap, tmp_path_factory):
    server = ServerProcess("all", quick_bootstrap.registry.root, tmp_path_factory.mktemp("logs"))
    server.start()
    try:
        server.wait_serving(180)
        yield server
    finally:
        server.stop()


def test_remote_commands_work_without_the_server_side(suite, client_env, tmp_path):
    rng = np.random.default_rng(0)
    picture = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(picture)
    style_image = tmp_path / "style.png"
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(style_image)
    features = tmp_path / "features.npy"
    np.save(features, rng.standard_normal(512).astype(np.float32))
    cap, vis, sty = (suite.address(s) for s in ("captioning", "visualization", "style"))
    commands = [
        ["health", "--addr", cap, "--addr", vis, "--addr", sty, "--json"],
        ["models", "list", "--addr", vis, "--json"],
        ["caption", str(picture), "--addr", cap, "--json"],
        ["caption", str(features), "--addr", cap, "--json"],
        ["classify", str(picture), "--addr", vis, "--top-k", "2", "--json"],
        ["saliency", str(picture), "--label", "auto", "-o", str(tmp_path / "saliency.png"), "--addr", vis,
         "--json"],
        ["fool", str(picture), "--target-class", "1", "-o", str(tmp_path / "fool.png"), "--max-iterations", "2",
         "--addr", vis, "--json"],
        ["dream", "--class", "1", "-o", str(tmp_path / "dream.png"), "--iterations", "2", "--addr", vis,
         "--json"],
        ["style", str(picture), str(style_image), "-o", str(tmp_path / "styled.png"), "--size", "32",
         "--style-size", "32", "--iterations", "2", "--addr", sty, "--json"],
    ]
    out = run_python(client_env, DRIVER, json.dumps(commands), timeout=240)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["leaked"] == []
    failed = [(r["argv"][:2], r["code"], r["stderr"]) for r in report["results"] if r["code"] != 0]
    assert failed == []
    rows = {" ".join(r["argv"][:2]): json.loads(r["stdout"]) for r in report["results"]}
    assert set(rows["health --addr"].values()) == {"SERVING"}
    assert [m["name"] for m in rows["models list"]] == ["shapes-squeezenet"]
    for key in (f"caption {picture}", f"caption {features}"):
        assert rows[key]["model"].startswith("shapes-captioner:") and rows[key]["captions"][0]["text"], rows[key]
    assert len(rows[f"classify {picture}"]["results"][0]["predictions"]) == 2
    for name in ("saliency.png", "fool.png", "dream.png", "styled.png"):
        assert Image.open(tmp_path / name).size[0] > 0


def test_the_console_entry_runs_in_a_client_only_install(suite, client_env):
    """``python -m pixelrpc.cli``, the way the ``pixelrpc`` script and container health checks run it."""
    proc = subprocess.run([sys.executable, "-m", "pixelrpc.cli", "health", "--addr", suite.address("style"),
                           "--service", "pixelrpc.v1.StyleTransferService"], env=client_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("SERVING")
