"""deploy/: every metric the Grafana dashboard and the Prometheus rules use is exported by the running
services, and the rules pass promtool (check and unit tests).

promtool comes with Debian's ``prometheus`` package; ``.ci/run`` installs it. Without it this test
fails (it does not skip), since the rules would otherwise go unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from registry_helpers import caption_request, publish_captioner

from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import captioning_pb2_grpc, registry_pb2, registry_pb2_grpc

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "pixelrpc.json"
PROMETHEUS = DEPLOY / "prometheus"
SERVICES = ("captioning", "visualization", "style")
FAST = Settings(shutdown_delay=0.0, torch_threads=1, device="cpu")
# Series Prometheus makes itself for every target; no service exports them.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "info": ("_info",), "untyped": ("",), "unknown": ("",)}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana's ``$variables`` allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)  # Grafana: (metric, label)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dash["panels"]):
        exprs += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_exprs() -> tuple[list[str], set[str]]:
    """``expr`` values (one line or a ``|`` block) and recorded names of rules.yml (no YAML library
    needed for the file's plain layout; promtool checks the file itself)."""
    exprs, recorded = [], set()
    lines = (PROMETHEUS / "rules.yml").read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        record = re.match(r"\s*-?\s*record:\s*(\S+)", line)
        if record:
            recorded.add(record.group(1))
        expr = re.match(r"(\s*)-?\s*expr:\s*(.*)$", line)
        if expr:
            value = expr.group(2).strip()
            if value in ("|", ">", "|-", ">-"):
                block, indent = [], len(expr.group(1))
                while i + 1 < len(lines) and (not lines[i + 1].strip()
                                              or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(block)
            exprs.append(value)
        i += 1
    return exprs, recorded


def scrape(port: int) -> set[str]:
    """The sample names a /metrics endpoint exports (a family without samples yet counts too)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, set[str]]:
    """Each of the three services in its own in-process server with its metrics endpoint, after a
    few calls (captions through the batcher, registry listings): service -> names exported."""
    from pixelrpc.models.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("dash") / "registry")
    publish_captioner(registry, "tiny-captioner")
    out = {}
    for service in SERVICES:
        with running_server([service], FAST, registry=registry) as srv:
            http, port = srv.ctx.metrics.serve_http(0)
            try:
                with grpc.insecure_channel(srv.address) as channel:
                    registry_pb2_grpc.ModelRegistryStub(channel).ListModels(registry_pb2.ListModelsRequest(), timeout=30)
                    if service == "captioning":
                        stub = captioning_pb2_grpc.CaptioningServiceStub(channel)
                        for k in range(2):
                            stub.Caption(caption_request("tiny-captioner", k=k), timeout=30)
                out[service] = scrape(port)
            finally:
                http.shutdown()
    return out


def test_every_metric_of_the_dashboard_and_the_rules_is_exported(exported):
    everything = set().union(*exported.values())
    exprs, recorded = rule_exprs()
    assert len(exprs) >= 8 and recorded
    used_by_rules = set().union(*map(metric_names, exprs)) - recorded
    used_by_dashboard = set().union(*map(metric_names, dashboard_exprs()))
    # The parser found what it should (it is not silently finding nothing).
    assert {"pixelrpc_requests_total", "pixelrpc_queue_pending", "pixelrpc_service_ready", "up"} <= used_by_rules
    assert {"pixelrpc_inference_total", "pixelrpc_inference_exec_total", "pixelrpc_batch_size_sum",
            "pixelrpc_compute_seconds_bucket", "process_resident_memory_bytes"} <= used_by_dashboard
    for where, used in (("rules.yml", used_by_rules), ("pixelrpc.json", used_by_dashboard)):
        missing = sorted(used - everything - SYNTHETIC)
        assert not missing, f"{where} uses metrics no service exports: {missing}"
    # What every service exports on its own (a process may serve one service).
    for service, names in exported.items():
        for name in ("pixelrpc_requests_total", "pixelrpc_request_latency_seconds_bucket",
                     "pixelrpc_compute_seconds_bucket", "pixelrpc_queue_pending", "pixelrpc_queue_capacity",
                     "pixelrpc_service_ready", "pixelrpc_registry_up", "process_cpu_seconds_total",
                     "process_open_fds"):
            assert name in names, (service, name)
        assert not any(n.endswith("_created") for n in names), service


def test_metric_name_parser():
    assert metric_names('sum by (service, le) (rate(a_bucket{code=~"OK|x"}[5m])) / b_total offset 5m') == {
        "a_bucket", "b_total"}
    assert metric_names('label_values(pixelrpc_requests_total{service=~"$service"}, model)') == {
        "pixelrpc_requests_total"}
    assert metric_names("histogram_quantile(0.99, x) > 2.5 and on(instance) up == 0") == {"x", "up"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (apt-get install -y prometheus), "
                    "as .ci/run does; the alert rules in deploy/prometheus are checked with it")
    return path


@pytest.mark.parametrize("args", [("check", "rules", "rules.yml"), ("check", "config", "prometheus.yml"),
                                  ("test", "rules", "rules_test.yml")], ids=" ".join)
def test_promtool(args):
    proc = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
