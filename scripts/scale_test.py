"""`make scale-test`: PixelRPC scaled out on one machine, behind nginx and with client-side round_robin.

Starts 3 visualization and 2 captioning replicas (``pixelrpc serve``, separate processes, loopback),
fronts them with nginx (Debian's package; ``grpc_pass`` to one upstream per service, retrying the next
replica on ``error``/``timeout``/502-504, the way a cluster's L7 proxy would), and drives bounded load:
``--clients`` closed-loop clients of the client library (saliency and captions) for ``--seconds``.
During the run: kill -9 one replica of each service, SIGTERM another visualization replica, start a
replacement for each. Then the same with the client library's own round_robin over the replica
addresses (``ipv4:`` target, retries on UNAVAILABLE). Reports requests, errors by code and p50/p99
before/during/after, how soon the replacement took traffic (its metrics), and throughput with 1, 2
and 3 visualization replicas.

    flock /tmp/bench.lock .venv/bin/python scripts/scale_test.py [--registry DIR] [--json OUT]

Not part of `make test`: it takes minutes and its numbers depend on the host (2 cores here: the
replicas, nginx and the clients share them, so throughput cannot scale past ~2 replicas).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

FULL = {"captioning": "pixelrpc.v1.CaptioningService", "visualization": "pixelrpc.v1.VisualizationService"}
PRELOAD = {"captioning": "shapes-captioner", "visualization": "shapes-squeezenet"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Replica:
    """One ``pixelrpc serve <service>`` process on fixed loopback ports."""

    def __init__(self, service: str, registry: str, log_dir: Path, port: int | None = None):
        self.service, self.registry = service, registry
        self.port, self.metrics_port = port or free_port(), free_port()
        self.log = log_dir / f"{service}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = {**os.environ, "PIXELRPC_REGISTRY": self.registry, "PIXELRPC_HOST": "127.0.0.1",
               "PIXELRPC_PORT": str(self.port), "PIXELRPC_METRICS_PORT": str(self.metrics_port),
               "PIXELRPC_DEVICE": "cpu", "PIXELRPC_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
               "PIXELRPC_PRELOAD": PRELOAD[self.service], "PIXELRPC_REQUIRE_MODELS": "1",
               # As in deploy/kubernetes: announce NOT_SERVING, wait, then drain.
               "PIXELRPC_SHUTDOWN_DELAY": "1", "PIXELRPC_SHUTDOWN_GRACE": "20"}
        self.started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pixelrpc.cli", "serve", self.service],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 180) -> float:
        with grpc.insecure_channel(self.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() - self.started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.service} on {self.addr} exited; see {self.log}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=FULL[self.service]), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - self.started
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.service} on {self.addr} not ready after {timeout}s")

    def handled(self) -> float:
        """Calls this replica answered OK (its pixelrpc_requests counter), 0 when unreachable."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).read().decode()
        except OSError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("pixelrpc_requests_total{") and 'code="OK"' in line)

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{upstreams}
{servers}
}}
"""
# A failed replica is skipped for fail_timeout; keepalive connections to each replica; a call that
# fails on one replica before its response started goes to the next (non_idempotent: gRPC calls are
# POSTs, and every PixelRPC inference call may safely run twice).
UPSTREAM = """    upstream {name} {{
{members}
        keepalive 32;
    }}"""
SERVER = """    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://{name};
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries 3;
            grpc_connect_timeout 2s;
            grpc_read_timeout 120s;
            grpc_send_timeout 120s;
        }}
    }}"""


class Nginx:
    def __init__(self, upstreams: dict[str, list[str]], log_dir: Path):
        self.exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(self.exe):
            raise SystemExit("nginx is missing: apt-get install -y nginx (Debian's package)")
        self.tmp = Path(tempfile.mkdtemp(prefix="pixelrpc-nginx-", dir=log_dir))
        self.ports = {name: free_port() for name in upstreams}
        members = {n: "\n".join(f"        server {a} max_fails=1 fail_timeout=2s;" for a in addrs)
                   for n, addrs in upstreams.items()}
        conf = NGINX_CONF.format(
            tmp=self.tmp,
            upstreams="\n".join(UPSTREAM.format(name=n, members=members[n]) for n in upstreams),
            servers="\n".join(SERVER.format(name=n, port=self.ports[n]) for n in upstreams))
        (self.tmp / "nginx.conf").write_text(conf)
        subprocess.run([self.exe, "-t", "-c", str(self.tmp / "nginx.conf"), "-g", "daemon off;"], check=True,
                       capture_output=True)
        self.proc = subprocess.Popen([self.exe, "-c", str(self.tmp / "nginx.conf"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def cpu_seconds(self) -> float:
        """CPU time of the master and its worker processes so far."""
        pid = self.proc.pid
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        total = 0.0
        for p in [str(pid), *kids]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Sample:
    t: float
    service: str
    ms: float
    code: str
    detail: str = ""


@dataclass
class Load:
    """Closed-loop clients of the client library; every call's end time, latency and status."""

    targets: dict[str, str]  # service -> target
    clients: dict[str, int]
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run_client(self, service: str, seed: int) -> None:
        from pixelrpc.clients.captioning import CaptioningClient
        from pixelrpc.clients.errors import RpcError
        from pixelrpc.clients.visualization import VisualizationClient

        image = png(64, seed)
        client = (VisualizationClient if service == "visualization" else CaptioningClient)(
            self.targets[service], timeout=30)
        call = (lambda: client.saliency(image)) if service == "visualization" else (lambda: client.caption(image))
        with client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                detail = ""
                try:
                    call()
                    code = "OK"
                except RpcError as exc:
                    code = getattr(getattr(exc, "code", None), "name", None) or type(exc).__name__
                    detail = str(exc)[:160]
                except grpc.RpcError as exc:
                    code, detail = exc.code().name, str(exc.details())[:160]
                t1 = time.monotonic()
                self.samples.append(Sample(t1, service, 1000 * (t1 - t0), code, detail))

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self.run_client, args=(s, k), daemon=True)
                        for s, n in self.clients.items() for k in range(n)]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        self.t_end = time.monotonic() - self.t0

    def failures(self) -> list[tuple[float, str, str, str]]:
        return [(round(s.t - self.t0, 2), s.service, s.code, s.detail) for s in self.samples if s.code != "OK"]


def summarize(samples: list[Sample], t0: float, start: float, end: float) -> dict:
    rows = [s for s in samples if start <= s.t - t0 < end]
    out = {"window_s": [round(start, 1), round(end, 1)], "requests": len(rows),
           "errors": dict(Counter(s.code for s in rows if s.code != "OK"))}
    for service in FULL:
        ok = np.array([s.ms for s in rows if s.service == service and s.code == "OK"])
        if len(ok):
            out[service] = {"ok": len(ok), "rps": round(len(ok) / (end - start), 1),
                            "p50_ms": round(float(np.percentile(ok, 50)), 1),
                            "p99_ms": round(float(np.percentile(ok, 99)), 1)}
    return out


def chaos(mode: str, registry: str, log_dir: Path, clients: int, seconds: float) -> dict:
    """One 60 s run: kill -9, SIGTERM, replacement, under load through nginx or round_robin."""
    vis = [Replica("visualization", registry, log_dir).start() for _ in range(3)]
    cap = [Replica("captioning", registry, log_dir).start() for _ in range(2)]
    spare = {"visualization": Replica("visualization", registry, log_dir),
             "captioning": Replica("captioning", registry, log_dir)}
    ready = [r.wait_ready() for r in vis + cap]
    upstreams = {"visualization": [r.addr for r in vis] + [spare["visualization"].addr],
                 "captioning": [r.addr for r in cap] + [spare["captioning"].addr]}
    nginx = Nginx(upstreams, log_dir) if mode == "nginx" else None
    targets = ({s: nginx.addr(s) for s in FULL} if nginx else {s: ",".join(a) for s, a in upstreams.items()})
    n_vis = max(1, round(clients * 10 / 16))
    load = Load(targets, {"visualization": n_vis, "captioning": clients - n_vis})
    events = []
    at = {"kill": 0.25 * seconds, "term": 0.4 * seconds, "new": 0.55 * seconds}
    try:
        load.start()
        time.sleep(at["kill"])
        vis[0].signal(signal.SIGKILL)
        cap[0].signal(signal.SIGKILL)
        events.append((round(time.monotonic() - load.t0, 1), "kill -9 visualization#0 and captioning#0"))
        time.sleep(at["term"] - at["kill"])
        vis[1].signal(signal.SIGTERM)
        events.append((round(time.monotonic() - load.t0, 1), "SIGTERM visualization#1"))
        time.sleep(at["new"] - at["term"])
        t_new = time.monotonic() - load.t0
        for r in spare.values():
            r.start()
        events.append((round(t_new, 1), "start replacements (visualization, captioning)"))
        took = {}
        for name, r in spare.items():
            r.wait_ready()
            ready_at = time.monotonic() - load.t0
            while time.monotonic() - load.t0 < seconds and r.handled() == 0:
                time.sleep(0.1)
            first = time.monotonic() - load.t0
            took[name] = {"ready_s_after_start": round(ready_at - t_new, 1),
                          "first_traffic_s_after_ready": round(first - ready_at, 1) if r.handled() else None}
        time.sleep(max(0.0, seconds - (time.monotonic() - load.t0)))
        load.finish()
        nginx_cpu = nginx.cpu_seconds() if nginx else None
        per_replica = {f"{r.service}:{r.port}": r.handled() for r in vis + cap + list(spare.values())}
    finally:
        load.stop.set()
        if nginx:
            nginx.stop()
        for r in vis + cap + list(spare.values()):
            r.stop()
    t0, end = load.t0, load.t_end
    ok = sum(1 for x in load.samples if x.code == "OK")
    return {"mode": mode, "clients": clients, "seconds": round(end, 1),
            "nginx_cpu_ms_per_request": round(1000 * nginx_cpu / max(1, ok), 3) if nginx else None,
            "replica_ready_s": [round(x, 1) for x in ready],
            "events": events, "replacement": took, "answered_by_replica_at_end": per_replica,
            "before": summarize(load.samples, t0, 0, at["kill"]),
            "during": summarize(load.samples, t0, at["kill"], at["new"] + 5),
            "after": summarize(load.samples, t0, at["new"] + 5, end),
            "total": summarize(load.samples, t0, 0, end), "failures": load.failures()}


def throughput(registry: str, log_dir: Path, clients: int, seconds: float) -> list[dict]:
    """Saliency calls/s with 1, 2 and 3 visualization replicas (client round_robin, no failures)."""
    reps = [Replica("visualization", registry, log_dir).start() for _ in range(3)]
    try:
        for r in reps:
            r.wait_ready()
        out = []
        for n in (1, 2, 3):
            load = Load({"visualization": ",".join(r.addr for r in reps[:n])}, {"visualization": clients})
            load.start()
            time.sleep(seconds)
            load.finish()
            s = summarize(load.samples, load.t0, 1.0, seconds)  # the first second warms connections
            out.append({"replicas": n, **s.get("visualization", {}), "errors": s["errors"]})
        return out
    finally:
        for r in reps:
            r.stop()


def ensure_registry(path: str | None, log_dir: Path) -> str:
    if path:
        return path
    reg = ROOT / "build" / "scale-registry"
    if not (reg / "shapes-squeezenet").is_dir() or not (reg / "shapes-captioner").is_dir():
        print(f"bootstrapping the quick models into {reg} (under a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "pixelrpc.cli", "models", "bootstrap", "--quick",
                        "--registry", str(reg)], check=True, stdout=open(log_dir / "bootstrap.log", "wb"),
                       stderr=subprocess.STDOUT)
    return str(reg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", default=os.environ.get("PIXELRPC_SCALE_REGISTRY"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--throughput-seconds", type=float, default=12)
    p.add_argument("--modes", default="nginx,client,throughput")
    p.add_argument("--json", default=str(ROOT / "build" / "scale-test.json"))
    a = p.parse_args()
    log_dir = ROOT / "build" / "scale-test"
    log_dir.mkdir(parents=True, exist_ok=True)
    registry = ensure_registry(a.registry, log_dir)
    report = {"host_cpus": os.cpu_count(), "registry": registry}
    failed = 0
    for mode in a.modes.split(","):
        if mode == "throughput":
            report["throughput"] = throughput(registry, log_dir, a.clients, a.throughput_seconds)
            for row in report["throughput"]:
                print(f"throughput: {row}", flush=True)
            continue
        result = chaos(mode, registry, log_dir, a.clients, a.seconds)
        report[mode] = result
        failed += sum(result["total"]["errors"].values())
        print(f"== {mode}: events {result['events']}; nginx CPU per request "
              f"{result['nginx_cpu_ms_per_request']} ms", flush=True)
        for phase in ("before", "during", "after", "total"):
            print(f"   {phase:<7} {json.dumps(result[phase])}", flush=True)
        print(f"   replacement {json.dumps(result['replacement'])}", flush=True)
        for f in result["failures"]:
            print(f"   failed at {f[0]} s: {f[1]} {f[2]} {f[3]}", flush=True)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"report: {a.json}; failed requests: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
