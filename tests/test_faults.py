"""Faults around real ``pixelrpc serve`` processes: signals, crashes, a crashed publisher, damaged and
vanishing registries.

Every server here is a subprocess on a private copy of the quick-bootstrapped registry, so the tests
may damage it. Expected outcomes follow the issue-10 contract: a tampered manifest is DATA_LOSS; an
unreadable registry root is UNAVAILABLE, an unreadable model folder or a manifest that is not a
regular file FAILED_PRECONDITION; never INTERNAL.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from PIL import Image
from server_procs import NOBODY, ServerProcess, can_drop_privileges

from pixelrpc.clients.errors import RpcError
from pixelrpc.clients.visualization import VisualizationClient
from pixelrpc.models.registry import Registry
from pixelrpc.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from pixelrpc.v1 import style_transfer_pb2 as spb
from pixelrpc.v1 import style_transfer_pb2_grpc as sgrpc
from pixelrpc.v1 import visualization_pb2 as vpb
from pixelrpc.v1 import visualization_pb2_grpc as vgrpc

pytestmark = pytest.mark.slow

SC = grpc.StatusCode
CLASSIFIER = "shapes-squeezenet"
GRACE = 2.0
FAST = {"PIXELRPC_REGISTRY_REFRESH_SECONDS": "0.5", "PIXELRPC_SHUTDOWN_GRACE": str(GRACE),
        "PIXELRPC_MAX_CONCURRENCY": "2", "PIXELRPC_PRELOAD": CLASSIFIER}


def png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (30, 160, 90)).save(buf, format="PNG")
    return buf.getvalue()


def outcome(fn) -> tuple[SC, object]:
    try:
        return SC.OK, fn()
    except grpc.RpcError as exc:
        return exc.code(), exc


def classify(server: ServerProcess, model: str = "", version: int = 0, timeout: float = 30.0):
    stub = vgrpc.VisualizationServiceStub(server.channel())
    ref = common_pb2.ModelRef(name=model, version=version) if model else None
    return outcome(lambda: stub.Classify(vpb.ClassifyRequest(model=ref, images=[common_pb2.Image(data=png())]),
                                         timeout=timeout))


def registry_call(server: ServerProcess, method: str, name: str = "", timeout: float = 30.0):
    stub = registry_pb2_grpc.ModelRegistryStub(server.channel())
    if method == "ListModels":
        return outcome(lambda: stub.ListModels(registry_pb2.ListModelsRequest(), timeout=timeout))
    return outcome(lambda: stub.GetModel(registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name=name)),
                                         timeout=timeout))


def copy_registry(source: Path, target: Path) -> Registry:
    shutil.copytree(source, target)
    return Registry(target)


def publish_copy(registry: Registry, name: str, of: str = CLASSIFIER) -> Path:
    """Publish ``of``'s default version again under ``name``; returns the new version's folder."""
    manifest = registry.resolve(of)
    files = {f.name: registry.model_dir(manifest) / f.name for f in manifest.files}
    published = registry.publish(name, files, tasks=manifest.tasks, framework=manifest.framework,
                                 metadata=manifest.metadata)
    return registry.model_dir(published)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# ====================================================================== signals and crashes
class StreamWatcher(threading.Thread):
    """Consume a server stream in the background; record messages, the last one and the final status."""

    def __init__(self, start_call):
        super().__init__(daemon=True)
        self.start_call = start_call
        self.messages = 0
        self.last = None
        self.code: SC | None = None
        self.details = ""
        self.first = threading.Event()

    def run(self):
        try:
            for message in self.start_call():
                self.messages += 1
                self.last = message
                self.first.set()
            self.code = SC.OK
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        except RpcError as exc:  # the client library's exceptions
            self.code, self.details = exc.code, exc.details
        finally:
            self.first.set()


def test_sigterm_during_streams_ends_them_with_a_status_and_exits_0(quick_bootstrap, tmp_path):
    """SIGTERM while a Stylize and a ClassVisualization stream run: each stream ends with UNAVAILABLE or
    its drained result, and the process exits 0 within the shutdown grace."""
    server = ServerProcess("all", quick_bootstrap.registry.root, tmp_path / "logs",
                           env={**FAST, "PIXELRPC_SHUTDOWN_DELAY": "0.2"}).start().wait_serving()
    try:
        style = sgrpc.StyleTransferServiceStub(server.channel("style"))
        vis = vgrpc.VisualizationServiceStub(server.channel("visualization"))
        job = spb.StyleJob(content=common_pb2.Image(data=png(64)), styles=[spb.StyleImage(
            image=common_pb2.Image(data=png(32)))], parameters=spb.StyleParameters(
            image_size=128, style_size=64, iterations=1000), seed=1)
        watchers = {
            "Stylize": StreamWatcher(lambda: style.Stylize(spb.StylizeRequest(job=job), timeout=120)),
            "ClassVisualization": StreamWatcher(lambda: vis.ClassVisualization(vpb.ClassVisualizationRequest(
                target_class=2, num_iterations=1000, size=128, show_every=1), timeout=120)),
        }
        for w in watchers.values():
            w.start()
        for name, w in watchers.items():
            assert w.first.wait(60) and w.messages > 0, f"{name} sent nothing: {w.code} {w.details}"
        sent = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(timeout=GRACE + 20)
        took = time.monotonic() - sent
        for w in watchers.values():
            w.join(30)
        assert code == 0, server.log_tail()
        assert took < GRACE + 10, f"exit took {took:.1f}s with a {GRACE}s grace"
        for name, w in watchers.items():
            assert w.code in (SC.UNAVAILABLE, SC.OK), f"{name} ended with {w.code}: {w.details!r}"
            if w.code == SC.OK:
                assert w.last.HasField("result"), f"{name} ended OK without its result"
    finally:
        server.stop(5)


def test_kill_9_during_a_stream_then_restart_on_the_same_port(quick_bootstrap, tmp_path):
    """kill -9 mid-stream: the stream fails UNAVAILABLE; calls while down fail UNAVAILABLE (no hang); a
    server restarted on the same port serves the same client object again (its retry policy rides out
    the reconnect)."""
    server = ServerProcess("visualization", quick_bootstrap.registry.root, tmp_path / "logs",
                           env=FAST).start().wait_serving()
    client = VisualizationClient(server.address(), timeout=30)
    try:
        assert client.classify(png()).results
        watcher = StreamWatcher(lambda: client.class_visualization_stream(
            3, num_iterations=1000, size=128, show_every=1, timeout=120))
        watcher.start()
        assert watcher.first.wait(60) and watcher.messages > 0, watcher.details
        server.process.kill()
        server.wait(10)
        watcher.join(30)
        assert watcher.code == SC.UNAVAILABLE, (watcher.code, watcher.details)
        with pytest.raises(RpcError) as down:
            client.classify(png(), timeout=10)
        assert down.value.code == SC.UNAVAILABLE
        server.start().wait_serving()
        response = client.classify(png())
        assert response.results and response.meta.model_name == CLASSIFIER
    finally:
        client.close()
        server.stop(10)


# ====================================================================== one damaged registry, one server
@pytest.fixture(scope="module")
def damaged(quick_bootstrap, tmp_path_factory):
    """A registry copy holding good models, a copy with a corrupted weights file, a copy whose manifest
    has one flipped bit, and a copy whose manifest is a FIFO; one visualization server on it."""
    root = tmp_path_factory.mktemp("faults") / "registry"
    registry = copy_registry(quick_bootstrap.registry.root, root)
    broken = publish_copy(registry, "broken-squeezenet")
    flip_bit(broken / "weights.safetensors", (broken / "weights.safetensors").stat().st_size // 2)
    tampered = publish_copy(registry, "tampered-squeezenet")
    text = (tampered / "manifest.json").read_text()
    # one bit of one value: the first letter of the description ("S" -> "R"), still valid JSON
    flip_bit(tampered / "manifest.json", text.index('"description": "') + len('"description": "'))
    json.loads((tampered / "manifest.json").read_text())
    fifo = publish_copy(registry, "fifo-squeezenet")
    (fifo / "manifest.json").unlink()
    os.mkfifo(fifo / "manifest.json")
    server = ServerProcess("visualization", root, tmp_path_factory.mktemp("faults-logs"), env=FAST)
    server.start().wait_ready()  # the tests assert readiness, which follows the preload
    yield registry, server
    _unblock_fifo(fifo / "manifest.json")
    server.stop(15)


def _unblock_fifo(path: Path) -> None:
    """Let a reader stuck on the FIFO go (write a line and close), so the server can shut down."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader waiting
        return
    try:
        os.write(fd, b"{}\n")
    finally:
        os.close(fd)


def test_corrupted_model_file_is_data_loss_and_other_models_still_serve(damaged):
    _, server = damaged
    code, err = classify(server, "broken-squeezenet")
    assert code == SC.DATA_LOSS, err
    assert classify(server, CLASSIFIER)[0] == SC.OK
    assert classify(server)[0] == SC.OK
    assert server.is_healthy(), server.health_report()


def test_tampered_manifest_is_data_loss(damaged):
    """One flipped bit in a manifest value (contract: manifest bytes tampered -> DATA_LOSS)."""
    _, server = damaged
    code, err = classify(server, "tampered-squeezenet")
    assert code == SC.DATA_LOSS, f"Classify on a tampered manifest: {code}"
    code, err = registry_call(server, "GetModel", "tampered-squeezenet")
    assert code == SC.DATA_LOSS, f"GetModel on a tampered manifest: {code}"
    assert classify(server, CLASSIFIER)[0] == SC.OK
    assert server.is_healthy(), server.health_report()


def test_manifest_that_is_a_fifo_is_failed_precondition(damaged):
    """A manifest that is not a regular file (a FIFO would block a reader forever): FAILED_PRECONDITION."""
    _, server = damaged
    try:
        code, err = classify(server, "fifo-squeezenet", version=1, timeout=5)
        assert code == SC.FAILED_PRECONDITION, f"got {code}"
        code, err = registry_call(server, "GetModel", "fifo-squeezenet", timeout=5)
        assert code in (SC.FAILED_PRECONDITION, SC.NOT_FOUND), f"got {code}"
    finally:
        _unblock_fifo(damaged[0].root / "fifo-squeezenet" / "1" / "manifest.json")
    assert classify(server, CLASSIFIER)[0] == SC.OK
    assert server.is_healthy(), server.health_report()


PUBLISHER = textwrap.dedent("""
    import os, sys, time
    from pixelrpc.models.registry import Registry
    from pixelrpc.models.registry import store

    root, name, big, hook = sys.argv[1:5]
    def stall(*args, **kwargs):
        print("staged", flush=True)
        time.sleep(120)
    if hook == "hashing":
        store.sha256_file = stall  # the files are in the staging folder; no manifest yet
    else:
        store.os.rename = stall  # manifest written in staging; not yet renamed into place
    registry = Registry(root)
    manifest = registry.resolve(name)
    registry.publish(name, {"weights.safetensors": big}, tasks=manifest.tasks,
                     framework=manifest.framework, metadata=manifest.metadata)
""")


@pytest.mark.parametrize("killed_while", ["hashing", "renaming"])
def test_publisher_killed_mid_publish_leaves_the_registry_valid(damaged, tmp_path, killed_while):
    """SIGKILL a publisher of a 64 MiB version mid-publish: the old default stays served and valid."""
    registry, server = damaged
    before = registry.versions(CLASSIFIER)
    listed_before = [m.ref for m in registry.list(all_versions=True)]
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.write(os.urandom(1024) * (64 * 1024))
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(registry.root), CLASSIFIER, str(big),
                                  killed_while], stdout=subprocess.PIPE, text=True)
    try:
        assert publisher.stdout.readline().strip() == "staged"
        publisher.kill()
    finally:
        publisher.wait(30)
    assert any(p.name.startswith(".staging-") for p in registry.root.iterdir()), "the crash left no staging folder?"
    assert registry.versions(CLASSIFIER) == before
    assert [m.ref for m in registry.list(all_versions=True)] == listed_before
    manifest = registry.resolve(CLASSIFIER)
    assert manifest.version == before[-1]
    registry.verify(manifest)
    time.sleep(1.0)  # > PIXELRPC_REGISTRY_REFRESH_SECONDS: the server re-read the default
    code, response = classify(server)
    assert code == SC.OK, response
    assert (response.meta.model_name, response.meta.model_version) == (CLASSIFIER, before[-1])
    assert server.is_healthy(), server.health_report()


def test_registry_removed_while_serving_then_restored(damaged, tmp_path):
    """The registry folder disappears: loaded models keep answering requests that name no model; once
    the folder is back, everything works again."""
    registry, server = damaged
    away = tmp_path / "registry-away"
    assert classify(server)[0] == SC.OK  # the default is loaded
    shutil.move(str(registry.root), str(away))
    try:
        time.sleep(1.5)  # > PIXELRPC_REGISTRY_REFRESH_SECONDS: the server has looked again
        code, err = classify(server)
        assert code == SC.OK, f"a loaded default model must keep serving: {code}"
        stub = vgrpc.VisualizationServiceStub(server.channel())
        code, err = outcome(lambda: stub.Saliency(vpb.SaliencyRequest(
            image=common_pb2.Image(data=png()), target_class=1), timeout=30))
        assert code == SC.OK, f"Saliency with the loaded default: {code}"
        assert registry_call(server, "ListModels")[0] != SC.INTERNAL
    finally:
        shutil.move(str(away), str(registry.root))
    time.sleep(1.0)
    assert classify(server, CLASSIFIER)[0] == SC.OK
    assert classify(server)[0] == SC.OK
    assert classify(server, "broken-squeezenet")[0] == SC.DATA_LOSS
    code, listed = registry_call(server, "ListModels")
    assert code == SC.OK and CLASSIFIER in {m.name for m in listed.models}
    assert server.is_healthy(), server.health_report()


# ====================================================================== permissions
@pytest.mark.skipif(not can_drop_privileges(), reason="needs root and setpriv to run the server as nobody")
def test_unreadable_registry_is_unavailable_or_failed_precondition_never_internal(quick_bootstrap):
    """The server runs as nobody (root ignores permissions). Root made unreadable: UNAVAILABLE; one model
    folder made unreadable: FAILED_PRECONDITION; never INTERNAL; restored: everything works."""
    base = Path(tempfile.mkdtemp(prefix="pixelrpc-unreadable-"))
    try:
        os.chmod(base, 0o755)
        root = base / "registry"
        registry = copy_registry(quick_bootstrap.registry.root, root)
        publish_copy(registry, "spare-squeezenet")
        (base / "home").mkdir()
        for path in [base, *base.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        server = ServerProcess("visualization", root, base / "logs", as_user=NOBODY,
                               env={**FAST, "HOME": str(base / "home")})
        server.start().wait_serving()
        try:
            assert classify(server)[0] == SC.OK
            os.chmod(root, 0)
            time.sleep(1.0)
            results = {
                "ListModels": registry_call(server, "ListModels")[0],
                "GetModel": registry_call(server, "GetModel", CLASSIFIER)[0],
                "Classify(spare-squeezenet)": classify(server, "spare-squeezenet")[0],
                "Classify(default, loaded)": classify(server)[0],
            }
            assert SC.INTERNAL not in results.values(), results
            assert results["ListModels"] == SC.UNAVAILABLE, results
            assert results["GetModel"] == SC.UNAVAILABLE, results
            assert results["Classify(spare-squeezenet)"] in (SC.UNAVAILABLE, SC.FAILED_PRECONDITION), results
            assert results["Classify(default, loaded)"] in (SC.OK, SC.UNAVAILABLE, SC.FAILED_PRECONDITION), results
            os.chmod(root, 0o755)
            os.chmod(root / "spare-squeezenet", 0)
            code, _ = classify(server, "spare-squeezenet")
            assert code == SC.FAILED_PRECONDITION, f"unreadable model folder: {code}"
            os.chmod(root / "spare-squeezenet", 0o755)
            time.sleep(1.0)
            assert classify(server, "spare-squeezenet")[0] == SC.OK
            assert registry_call(server, "ListModels")[0] == SC.OK
            assert server.is_healthy(), server.health_report()
        finally:
            assert server.stop(15) == 0, server.log_tail()
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)
