"""Smoke test of the soak benchmark (``bench/soak.py``; the full 60 s run is not part of ``make test``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_soak_runs_briefly_and_prints_a_summary(quick_bootstrap, tmp_path):
    env = {**os.environ, "PIXELRPC_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--seconds", "3", "--interval", "1",
         "--caption-clients", "8", "--vis-clients", "2", "--registry", str(quick_bootstrap.registry.root),
         "--logs", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    periodic = [line for line in out.splitlines() if line.startswith("t=")]
    assert periodic and all("rss[cap]" in line and "rss[vis]" in line and "p99" in line for line in periodic)
    summary = out.split("\nsummary\n", 1)[1]
    for expected in ("captioning", "visualization", "peak RSS", "errors",
                     "server exit codes {'captioning': 0, 'visualization': 0}"):
        assert expected in summary, summary


def test_captioning_benchmark_smoke_records_every_row(tmp_path):
    """``bench/captioning.py --smoke``: every row (decode N=1/4, gRPC load, server CPU, 1-client p50,
    training step vs torch) with tiny sizes; rows go to the results file. No timing assertions."""
    results = tmp_path / "rows.jsonl"
    env = {**os.environ, "PIXELRPC_BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "captioning.py"), "--smoke"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = results.read_text().splitlines()
    workloads = " ".join(rows)
    assert len(rows) == 6, proc.stdout
    for expected in ("greedy decode in process, N=1", "concurrent single-caption clients",
                     "server CPU per caption", "1 client", "LSTM training step"):
        assert expected in workloads, expected


def test_visualization_bench_smoke_prints_its_rows(quick_bootstrap):
    """``bench/visualization.py --smoke``: server subprocess, references and the five rows; no timing asserted."""
    env = {**os.environ, "PIXELRPC_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PIXELRPC_BENCH_RESULTS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "visualization.py"), "--smoke", "--threads", "1",
         "--registry", str(quick_bootstrap.registry.root), "--model", "shapes-squeezenet"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = [line for line in proc.stdout.splitlines() if line.lstrip().startswith(("[pass]", "[FAIL]"))]
    assert len(rows) == 5, proc.stdout
    for workload in ("Classify p50", "Saliency p50", "FoolingImage per step", "ClassVisualization per step",
                     "4 concurrent clients"):
        assert any(workload in row for row in rows), proc.stdout


def test_doors_bench_smoke_records_every_row(quick_bootstrap, tmp_path):
    """``bench/doors.py --smoke``: one server, one load-generator process per door; each of the four doors
    (OIP gRPC with a grpc.aio stub and with tritonclient, OIP HTTP, native JSON over HTTP) against native
    gRPC for Classify and Caption: p50, throughput at 4 and 64 clients, server CPU per call. 32 rows, the
    HTTP ones with target "report". No timing assertions."""
    if importlib.util.find_spec("tritonclient") is None:  # not imported: see tests/oip_client.py
        pytest.skip("tritonclient is a test dependency (pyproject dev extra)")
    results = tmp_path / "rows.jsonl"
    env = {**os.environ, "PIXELRPC_BENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "doors.py"), "--smoke", "--registry",
                           str(quick_bootstrap.registry.root)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 32, proc.stdout
    workloads = " ".join(r["workload"] for r in rows)
    for expected in ("Classify p50, 1 client, OIP gRPC (grpc.aio stub)", "Caption throughput, 64 clients",
                     "OIP gRPC (tritonclient.grpc.aio)", "OIP HTTP (tritonclient.http.aio", "native JSON over HTTP",
                     "server CPU per call, 64 clients"):
        assert expected in workloads, expected
    assert {r["target"] for r in rows if "HTTP" in r["workload"]} == {"report"}
    assert all(r["reference"].startswith("native gRPC") for r in rows)
