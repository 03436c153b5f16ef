"""Every door of one server, same run: native gRPC, OIP gRPC, OIP HTTP and native JSON over HTTP (issue 14).

One server process (``--role serve``: a visualization and a captioning server, each with its gRPC and
its HTTP port, as ``pixelrpc serve all`` runs them; CPU, ``--threads`` torch threads, queue depth
256) and one load-generator process per door (``--role door``), all run the same way: one asyncio
event loop, one client object of that door, N coroutines calling it back to back. This process only
orchestrates (stdlib only): it sends each door a command on its stdin, reads the answer, and reads
the server's and the door's CPU time (with their child processes: bench/procfs.py) from /proc
around each command. The doors:

- ``native``: native gRPC, PixelRPC's async client (``AsyncVisualizationClient`` / ``AsyncCaptioningClient``);
- ``oip-stub``: OIP gRPC, a plain grpc.aio stub of Triton's generated messages (the same kind of
  client as ``native``: the protocols compared);
- ``oip-grpc``: OIP gRPC, tritonclient's asyncio client (``tritonclient.grpc.aio``);
- ``oip-http``: OIP HTTP (KServe V2 REST), tritonclient's asyncio client (``tritonclient.http.aio``),
  binary tensors in and out;
- ``json-http``: the native API as JSON over HTTP (the Connect route), an aiohttp session.

tritonclient's generated protos and PixelRPC's ``inference`` protos cannot share a process, so no
process here imports both: the server imports PixelRPC's, each door only its own client.

Workloads: Classify (one 64 x 64 PNG, the registry's classifier, default shapes-squeezenet; native
asks top 5, OIP the PROBABILITIES tensor) and Caption (one feature vector, greedy, default
shapes-captioner; every door goes through the same dynamic batcher). For each workload and door:
p50 of --calls sequential calls per repeat (in 5 slices interleaved with the other doors', every
call's time pooled), throughput with 4 and with 64 concurrent calls for --seconds each, the
server's CPU time per call at 64 (and the door's own CPU per call, printed). Doors are interleaved
within each repeat (the starting door rotates), medians of --repeats. Rows: each door
against ``native`` (ratio = door / native); OIP gRPC targets p50 <= 1.2, throughput >= 0.83 (within
1.2x), server CPU <= 1.2; HTTP rows are reported with no target (bench/README.md says why).

Without --registry the QUICK models are bootstrapped into a temporary folder first (about a minute).

    flock /tmp/bench.lock .venv/bin/python bench/doors.py --registry /work/quick-registry
    .venv/bin/python bench/doors.py --smoke --registry REG
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procfs import cpu_seconds
from results import REPORT, record

DOORS = {  # door -> (its label in the rows, family for the targets)
    "native": ("native gRPC (PixelRPC AsyncClient)", "native"),
    "oip-stub": ("OIP gRPC (grpc.aio stub)", "grpc"),
    "oip-grpc": ("OIP gRPC (tritonclient.grpc.aio)", "grpc"),
    "oip-http": ("OIP HTTP (tritonclient.http.aio, binary tensors)", "http"),
    "json-http": ("native JSON over HTTP (Connect route, aiohttp)", "http"),
}
SERVICES = {"Classify": "visualization", "Caption": "captioning"}  # workload -> the service serving it
WORKLOADS = tuple(SERVICES)
# Targets: OIP gRPC within 1.2x of native (issue 14). HTTP: reported, no target (bench/README.md says why).
TARGETS = {"grpc": {"p50": "<= 1.2", "throughput": ">= 0.83", "cpu": "<= 1.2"},
           "http": {"p50": REPORT, "throughput": REPORT, "cpu": REPORT}}
TIMEOUT = 60.0


# ====================================================================== the server (--role serve)
def serve(args) -> None:
    import logging

    from pixelrpc.services.server import create_server, serve_until_signal
    from pixelrpc.services.settings import Settings

    logging.basicConfig(level=logging.WARNING)

    async def main() -> int:
        settings = Settings(registry=args.registry, host="127.0.0.1", port=0, http_port=0, metrics_port=0,
                            device="cpu", torch_threads=args.threads, shutdown_delay=0, queue_depth=256,
                            log_level="WARNING")
        servers = {}
        for workload, service in SERVICES.items():  # one server per service, as `pixelrpc serve all` runs them
            servers[workload], _port = await create_server([service], settings)
            await servers[workload].start()
        print(json.dumps({w: {"grpc": s.address, "http": f"127.0.0.1:{s.http_port}"} for w, s in servers.items()}),
              flush=True)
        return await serve_until_signal(list(servers.values()))

    raise SystemExit(asyncio.run(main()))


# ====================================================================== the doors (--role door)
def png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (230, 230, 230))
    ImageDraw.Draw(img).ellipse((12, 12, 52, 52), fill=(200, 40, 40))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


async def door_calls(door: str, args) -> tuple[dict, object]:
    """({workload: coroutine function doing one call}, coroutine function closing the client)."""
    import numpy as np

    grpc_of = {w: a["grpc"] for w, a in args.addrs.items()}
    http_of = {w: a["http"] for w, a in args.addrs.items()}
    image = png()
    features = np.random.default_rng(0).standard_normal((1, args.dim)).astype(np.float32)
    if door == "native":
        from pixelrpc.clients.captioning import AsyncCaptioningClient
        from pixelrpc.clients.visualization import AsyncVisualizationClient

        vis = AsyncVisualizationClient(grpc_of["Classify"], timeout=TIMEOUT)
        cap = AsyncCaptioningClient(grpc_of["Caption"], timeout=TIMEOUT)

        async def classify():
            await vis.classify(image, model=args.classifier, top_k=5)

        async def caption():
            await cap.caption(features[0], model=args.captioner)

        async def close():
            await vis.close()
            await cap.close()
    elif door == "oip-stub":
        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc as pb_grpc

        channels = {w: grpc.aio.insecure_channel(a) for w, a in grpc_of.items()}
        stubs = {w: pb_grpc.GRPCInferenceServiceStub(c) for w, c in channels.items()}
        classify_req = pb.ModelInferRequest(model_name=args.classifier,
                                            raw_input_contents=[len(image).to_bytes(4, "little") + image])
        classify_req.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
        caption_req = pb.ModelInferRequest(model_name=args.captioner, raw_input_contents=[features.tobytes()])
        caption_req.inputs.add(name="FEATURES", datatype="FP32", shape=list(features.shape))

        async def classify():
            response = await stubs["Classify"].ModelInfer(classify_req, timeout=TIMEOUT)
            np.frombuffer(response.raw_output_contents[0], dtype="<f4")

        async def caption():
            response = await stubs["Caption"].ModelInfer(caption_req, timeout=TIMEOUT)
            raw = response.raw_output_contents[0]
            raw[4:4 + int.from_bytes(raw[:4], "little")].decode()

        async def close():
            for channel in channels.values():
                await channel.close()
    elif door in ("oip-grpc", "oip-http"):
        if door == "oip-grpc":
            import tritonclient.grpc.aio as tc

            clients = {w: tc.InferenceServerClient(a) for w, a in grpc_of.items()}
            extra, out = {"client_timeout": TIMEOUT}, {}
        else:
            import tritonclient.http.aio as tc

            clients = {w: tc.InferenceServerClient(a, conn_limit=100, conn_timeout=TIMEOUT) for w, a in http_of.items()}
            extra, out = {}, {"binary_data": True}

        async def infer(workload, model, name, datatype, array, output):
            tensor = tc.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, **out)
            wanted = [tc.InferRequestedOutput(output, **out)]
            result = await clients[workload].infer(model, [tensor], outputs=wanted, **extra)
            result.as_numpy(output)

        async def classify():
            await infer("Classify", args.classifier, "IMAGE", "BYTES", np.array([image], dtype=object), "PROBABILITIES")

        async def caption():
            await infer("Caption", args.captioner, "FEATURES", "FP32", features, "CAPTION")

        async def close():
            for client in clients.values():
                await client.close()
    elif door == "json-http":
        import base64

        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100),
                                        timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        headers = {"Content-Type": "application/json"}

        async def post(workload: str, path: str, message: dict) -> dict:
            url = f"http://{http_of[workload]}{path}"
            async with session.post(url, data=json.dumps(message), headers=headers) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status}: {body[:300]!r}")
                return json.loads(body)

        async def classify():
            await post("Classify", "/pixelrpc.v1.VisualizationService/Classify", {
                "model": {"name": args.classifier}, "topK": 5, "images": [{"data": base64.b64encode(image).decode()}]})

        async def caption():
            await post("Caption", "/pixelrpc.v1.CaptioningService/Caption", {"job": {
                "model": {"name": args.captioner}, "options": {"strategy": "DECODING_STRATEGY_GREEDY"},
                "features": {"shape": [args.dim], "dtype": "float32",
                             "data": base64.b64encode(features[0].tobytes()).decode()}}})

        close = session.close
    else:
        raise SystemExit(f"unknown door {door!r}")
    return {"Classify": classify, "Caption": caption}, close


async def p50(call, calls: int) -> dict:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return {"calls": calls, "times_ms": [t * 1000.0 for t in times]}


async def load(call, clients: int, seconds: float) -> dict:
    """``clients`` coroutines calling back to back until ``seconds`` have passed; every call counts."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client():
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"calls": done, "seconds": time.perf_counter() - start}


def door(args) -> None:
    """Answer one JSON command per stdin line with one JSON line on stdout (the event loop idles between)."""
    loop = asyncio.new_event_loop()
    calls, close = loop.run_until_complete(door_calls(args.door, args))
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            call = calls[cmd["workload"]]
            if cmd["op"] == "p50":
                answer = loop.run_until_complete(p50(call, cmd["calls"]))
            else:
                answer = loop.run_until_complete(load(call, cmd["clients"], cmd["seconds"]))
            print(json.dumps(answer), flush=True)
    finally:
        loop.run_until_complete(close())
        loop.close()


# ====================================================================== the orchestrator
def machine_busy_seconds() -> float:
    """CPU time every process of the machine has used so far, all CPUs (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")


def child_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}


class Door:
    """A ``--role door`` subprocess."""

    def __init__(self, name: str, args, addrs: dict, dim: int):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "door", "--door", name, "--addrs", json.dumps(addrs),
             "--dim", str(dim), "--classifier", args.classifier, "--captioner", args.captioner],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(1))
        self.read()  # {"ready": true}

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"door {self.name} exited with {self.proc.wait()} (its stderr is above)")
        return json.loads(line)

    def run(self, server_pid: int, **cmd) -> dict:
        """The door's answer, with the CPU seconds the server, the door and every other process of the
        machine used meanwhile (others: the box's load, which this run does not control)."""
        server, client, machine = cpu_seconds(server_pid), cpu_seconds(self.proc.pid), machine_busy_seconds()
        start = time.perf_counter()
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        answer["server_cpu_s"] = cpu_seconds(server_pid) - server
        answer["client_cpu_s"] = cpu_seconds(self.proc.pid) - client
        others = machine_busy_seconds() - machine - answer["server_cpu_s"] - answer["client_cpu_s"]
        answer["other_cores"] = max(0.0, others) / (time.perf_counter() - start)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(args) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, __file__, "--role", "serve", "--registry", args.registry,
                             "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True,
                            env=child_env(args.threads))
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"server exited with {proc.wait()} (its stderr is above)")
    addrs = json.loads(line)
    deadline = time.monotonic() + 180
    for addr in addrs.values():
        while True:  # ready: the preload on the torch thread is done
            try:
                with urllib.request.urlopen(f"http://{addr['http']}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server not ready")
            time.sleep(0.2)
    return proc, addrs


def feature_dim(http_addr: str, captioner: str) -> int:
    with urllib.request.urlopen(f"http://{http_addr}/v2/models/{captioner}", timeout=60) as r:
        meta = json.loads(r.read())
    return int(next(i for i in meta["inputs"] if i["name"] == "FEATURES")["shape"][1])


P50_SLICES = 5  # each repeat's sequential calls are measured in this many interleaved slices


def measure(doors: dict[str, Door], server_pid: int, workload: str, args) -> dict:
    """{(measure, door): [answers, one per repeat]}; doors interleaved, the first one rotating."""
    names = list(doors)
    out: dict = {}
    for m in ("p50", *args.clients):
        # p50: P50_SLICES rounds per repeat of a slice of the calls each, so that a slow spell of the
        # machine (seconds long on this shared box) falls on every door alike; the times are pooled
        rounds = args.repeats * (P50_SLICES if m == "p50" else 1)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if m == "p50":
                    answer = doors[name].run(server_pid, op="p50", workload=workload,
                                             calls=max(1, args.calls // P50_SLICES))
                else:
                    answer = doors[name].run(server_pid, op="load", workload=workload, clients=m,
                                             seconds=args.seconds)
                    answer["throughput"] = answer["calls"] / answer["seconds"]
                out.setdefault((m, name), []).append(answer)
    return out


def med(answers: list[dict], key: str) -> float:
    return statistics.median(a[key] for a in answers)


def pooled_p50(answers: list[dict]) -> float:
    """The median of every call's time (ms), pooled over the slices."""
    return statistics.median(t for a in answers for t in a["times_ms"])


def per_call_ms(answers: list[dict], key: str) -> float:
    return statistics.median(a[key] * 1000.0 / a["calls"] for a in answers)


def report(workload: str, results: dict, args) -> None:
    high = max(args.clients)
    print(f"\n{workload}: medians of {args.repeats} [lowest-highest]; p50 in ms, throughput in calls/s; "
          f"CPU ms per call and other processes' load (cores) at {high} clients")
    print(f"  {'door':50} {'p50':>5} " + " ".join(f"{f'{c} clients':>19}" for c in args.clients)
          + f" {'server CPU':>17} {'door CPU':>9} {'others':>6}")
    for name, (label, _) in DOORS.items():
        if ("p50", name) not in results:
            continue
        line = f"  {label:50} {pooled_p50(results[('p50', name)]):5.2f} "
        for c in args.clients:
            values = [a["throughput"] for a in results[(c, name)]]
            line += f"{statistics.median(values):7.1f} [{min(values):4.0f}-{max(values):4.0f}] "
        cpu = [a["server_cpu_s"] * 1000.0 / a["calls"] for a in results[(high, name)]]
        line += f"{statistics.median(cpu):5.2f} [{min(cpu):.2f}-{max(cpu):.2f}] "
        line += f"{per_call_ms(results[(high, name)], 'client_cpu_s'):9.2f} "
        line += f"{med(results[(high, name)], 'other_cores'):6.2f}"
        print(line)
    print(flush=True)
    where = f"; {args.what[workload]}, {args.threads} torch thread(s)"
    n = "native"
    for name, (label, family) in DOORS.items():
        if name == n or ("p50", name) not in results:
            continue
        target = TARGETS[family]
        a, b = pooled_p50(results[("p50", n)]), pooled_p50(results[("p50", name)])
        record(f"{workload} p50, 1 client, {label}{where}", DOORS[n][0], a, b, "ms", b / a, target["p50"])
        for c in args.clients:
            a, b = med(results[(c, n)], "throughput"), med(results[(c, name)], "throughput")
            record(f"{workload} throughput, {c} clients, {label}{where}", DOORS[n][0], a, b, "calls/s", b / a,
                   target["throughput"])
        a, b = per_call_ms(results[(high, n)], "server_cpu_s"), per_call_ms(results[(high, name)], "server_cpu_s")
        record(f"{workload} server CPU per call, {high} clients, {label}{where}", DOORS[n][0], a, b, "ms", b / a,
               target["cpu"])


def orchestrate(args) -> None:
    tmp = None
    if not args.registry:
        tmp = tempfile.TemporaryDirectory(prefix="pixelrpc-doors-")
        args.registry = str(Path(tmp.name) / "registry")
        print(f"bootstrapping the QUICK models into {args.registry}", flush=True)
        subprocess.run([sys.executable, "-m", "pixelrpc.cli", "models", "bootstrap", "--quick", "--quiet",
                        "--registry", args.registry, "--threads", str(max(1, args.threads))], check=True,
                       env=child_env(args.threads))
    print(f"== bench/doors.py: registry {args.registry}, server torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs; p50 of {args.calls} calls, throughput over {args.seconds} s, "
          f"{args.repeats} repeats", flush=True)
    server, addrs = start_server(args)
    doors: dict[str, Door] = {}
    try:
        dim = feature_dim(addrs["Caption"]["http"], args.captioner)
        args.what = {"Classify": f"64 px PNG, {args.classifier}",
                     "Caption": f"{dim}-d features, greedy, {args.captioner}"}
        for name in ["native", *args.doors]:
            doors[name] = Door(name, args, addrs, dim)
        for d in doors.values():  # warm: model loads, first-call costs, every connection a door opens
            for workload in args.workloads:
                d.run(server.pid, op="p50", workload=workload, calls=3)
                d.run(server.pid, op="load", workload=workload, clients=max(args.clients), seconds=0.05)
        for workload in args.workloads:
            report(workload, measure(doors, server.pid, workload, args), args)
    finally:
        for d in doors.values():
            d.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", default=os.environ.get("PIXELRPC_REGISTRY", ""),
                        help="a registry with the two models (default: bootstrap the QUICK ones into a temp folder)")
    parser.add_argument("--classifier", default="shapes-squeezenet")
    parser.add_argument("--captioner", default="shapes-captioner")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch / BLAS threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="sequential calls per p50")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per throughput measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 64], help="concurrencies measured")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--doors", nargs="+", choices=list(DOORS)[1:], default=list(DOORS)[1:],
                        help="the doors compared with native (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every row runs")
    parser.add_argument("--role", choices=["bench", "serve", "door"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--door", choices=list(DOORS), help=argparse.SUPPRESS)
    parser.add_argument("--addrs", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        serve(args)
    elif args.role == "door":
        door(args)
    else:
        if args.smoke:
            args.repeats, args.calls, args.seconds = 1, 4, 0.2
        orchestrate(args)


if __name__ == "__main__":
    main()
