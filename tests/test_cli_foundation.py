"""The CLI skeleton: serve, health, models list/show/verify/remove, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner
from conftest import publish_toy

from pixelrpc.cli import cli, main
from pixelrpc.cli.launcher import start_suite


def run_cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "pixelrpc.cli", *args], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_models_list_show_verify_remove(registry):
    publish_toy(registry, "toy", 1.0)
    publish_toy(registry, "toy", 2.0)
    runner = CliRunner()
    r = runner.invoke(cli, ["models", "list", "--registry", str(registry.root), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(x["name"], x["version"], x["default"]) for x in rows] == [("toy", 2, True)]
    r = runner.invoke(cli, ["models", "show", "toy:1", "--registry", str(registry.root), "--json"])
    assert json.loads(r.output)["metadata"]["value"] == 1.0
    r = runner.invoke(cli, ["models", "verify", "--registry", str(registry.root)])
    assert r.exit_code == 0 and r.output.count(" ok") == 2
    (registry.model_dir(registry.resolve("toy", 1)) / "weights.safetensors").write_bytes(b"garbage")
    r = runner.invoke(cli, ["models", "verify", "--registry", str(registry.root)])
    assert r.exit_code == 1 and "CORRUPT" in r.output
    r = runner.invoke(cli, ["models", "remove", "toy:1", "--registry", str(registry.root)])
    assert r.exit_code == 0
    assert registry.versions("toy") == [2]


def test_errors_are_one_line_without_traceback(registry, capsys):
    code = main(["models", "show", "nope", "--registry", str(registry.root)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "pixelrpc models bootstrap" in err


def test_every_command_has_help():
    runner = CliRunner()
    for args in (["--help"], ["serve", "--help"], ["health", "--help"], ["models", "--help"],
                 ["models", "list", "--help"], ["models", "import", "--help"]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0 and "Usage" in r.output, args


def test_serve_health_and_models_list_addr_against_real_processes(registry, tmp_path):
    publish_toy(registry, "toy", 1.0, tasks=("captioning",))
    suite = start_suite(registry.root, tmp_path / "logs", services=("captioning", "style"))
    try:
        suite.wait_healthy(120)
        code, out, err = run_cli("health", "--addr", suite.address("captioning"), "--addr",
                                 suite.address("style"), "--json")
        assert code == 0, err
        assert set(json.loads(out).values()) == {"SERVING"}
        code, out, err = run_cli("models", "list", "--addr", suite.address("captioning"), "--json")
        assert code == 0, err
        assert [m["name"] for m in json.loads(out)] == ["toy"]
        code, out, err = run_cli("models", "list", "--addr", suite.address("style"), "--json")
        assert json.loads(out) == []  # style serves feature-extraction models only
        log = (tmp_path / "logs" / "captioning.log").read_text()
        assert f"listening on 127.0.0.1:{suite.services['captioning'].port}" in log
    finally:
        codes = suite.stop()
    assert codes == {"captioning": 0, "style": 0}
    code, out, err = run_cli("health", "--addr", suite.address("captioning"), "--timeout", "1")
    assert code == 1 and "UNAVAILABLE" in out + err


def test_serve_all_runs_three_services_in_one_process(registry, tmp_path):
    from pixelrpc.cli.launcher import free_port

    ports = {s: free_port() for s in ("captioning", "visualization", "style")}
    env = {**os.environ, "PIXELRPC_REGISTRY": str(registry.root), "PIXELRPC_METRICS_PORT": "0",
           **{f"PIXELRPC_{s.upper()}_PORT": str(p) for s, p in ports.items()},
           **{f"PIXELRPC_{s.upper()}_METRICS_PORT": "0" for s in ports},
           **{f"PIXELRPC_{s.upper()}_HTTP_PORT": "-1" for s in ports}}
    proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", "all"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = set()
        while len(seen) < 3:
            line = proc.stdout.readline()
            assert line, "serve all exited early"
            for s, p in ports.items():
                if f"pixelrpc {s} listening on 127.0.0.1:{p}" in line:
                    seen.add(s)
        code, out, err = run_cli("health", *sum((["--addr", f"127.0.0.1:{p}"] for p in ports.values()), []))
        assert code == 0, out + err
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
