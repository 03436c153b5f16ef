"""Registry faults: names, broken entries, sealed manifests, an unreadable or vanished registry, staging.

Every broken entry answers FAILED_PRECONDITION, DATA_LOSS or UNAVAILABLE with what to do, never
INTERNAL, and never hides the healthy models.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from conftest import REPO, publish_toy
from registry_helpers import Stubs, publish_captioner

from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt, RegistryUnavailable
from pixelrpc.models.registry import Manifest, ModelCache, Registry, parse_ref, validate_name
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)
BAD_NAMES = ["evil\n", "toy\n", "a\tb", "nul\x00", "cr\r", "esc\x1b[31m", "caf\u00e9", "Toy", "x" * 65, " toy",
             "toy ", "-toy", "..", "a/b"]


def run_cli(*args, env=None, user=None):
    cmd = [sys.executable, "-m", "pixelrpc.cli", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", BAD_NAMES)
def test_control_characters_and_trailing_newlines_are_refused_everywhere(registry, name):
    with pytest.raises(InvalidInput, match="invalid model name"):
        validate_name(name)
    with pytest.raises(InvalidInput):
        parse_ref(name)
    with pytest.raises(InvalidInput):
        parse_ref(f"{name}:1")
    with pytest.raises(InvalidInput):
        publish_toy(registry, name=name)
    with pytest.raises(InvalidInput):
        registry.resolve(name)
    assert not registry.root.exists() or registry.names() == []


@pytest.mark.parametrize("ref", ["toy:1\n", "toy:\u00b2", "toy:-1", "toy:1.0", "toy:9999999999", "toy: 1"])
def test_bad_versions_are_invalid_input_not_internal(ref):
    with pytest.raises(InvalidInput):
        parse_ref(ref)


def test_names_over_grpc_and_folders_made_by_hand(registry):
    publish_toy(registry, "toy")
    (registry.root / "evil\n").mkdir()
    (registry.root / "Upper").mkdir()
    assert registry.names() == ["toy"]
    with running_server(["captioning"], FAST, registry=registry) as srv:
        s = Stubs(srv.address)
        for name in ("toy\n", "evil\n", "Upper", "toy\x00"):
            assert s.code(s.registry.GetModel, _get(name)) == grpc.StatusCode.INVALID_ARGUMENT
            assert s.code(s.captioning.Caption, _caption(name)) == grpc.StatusCode.INVALID_ARGUMENT
        resp = s.list_models()
        assert [m.name for m in resp.models] == ["toy"]
        assert sorted(b.name for b in resp.broken) == ["'Upper'", "'evil\\n'"]  # escaped, not raw
        assert {b.code for b in resp.broken} == {"FAILED_PRECONDITION"}
        s.close()


def _get(name: str, version: int = 0):
    from pixelrpc.v1 import common_pb2, registry_pb2

    return registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name=name, version=version))


def _caption(name: str):
    from registry_helpers import caption_request

    return caption_request(name)


# ---------------------------------------------------------------------------------------------- broken entries
def _flip_bit(path: Path, needle: bytes, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(needle)
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


def _unseal(path: Path) -> None:
    data = json.loads(path.read_text())
    data.pop("digest")
    data["schema"] = 1
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def broken_registry(root: Path) -> Registry:
    """One healthy model and one entry of every broken kind."""
    reg = Registry(root)
    publish_toy(reg, "good")
    m = publish_toy(reg, "manifest-dir")
    (reg.model_dir(m) / "manifest.json").unlink()
    (reg.model_dir(m) / "manifest.json").mkdir()
    m = publish_toy(reg, "manifest-fifo")
    (reg.model_dir(m) / "manifest.json").unlink()
    os.mkfifo(reg.model_dir(m) / "manifest.json")  # reading it would block forever
    m = publish_toy(reg, "tampered")
    _flip_bit(reg.model_dir(m) / "manifest.json", b'numpy', bit=1)  # one bit inside a value
    m = publish_toy(reg, "unsealed")
    _unseal(reg.model_dir(m) / "manifest.json")
    (reg.root / "plain-file").write_text("not a model folder")
    (reg.root / "Bad Name").mkdir()
    return reg


EXPECTED_BROKEN = {
    "manifest-dir": "FAILED_PRECONDITION",
    "manifest-fifo": "FAILED_PRECONDITION",
    "tampered": "DATA_LOSS",
    "unsealed": "FAILED_PRECONDITION",
    "plain-file": "FAILED_PRECONDITION",
    "'Bad Name'": "FAILED_PRECONDITION",
}


def test_broken_entries_are_reported_and_never_hide_the_healthy_model(tmp_path):
    reg = broken_registry(tmp_path / "registry")
    manifests, broken = reg.scan(all_versions=True)
    assert [m.ref for m in manifests] == ["good:1"]
    assert {b.name for b in broken} == set(EXPECTED_BROKEN)
    assert ModelCache(reg).get("good").manifest.ref == "good:1"
    with pytest.raises(FailedPrecondition, match="seal"):
        reg.resolve("unsealed")
    with pytest.raises(ModelCorrupt, match="digest"):
        reg.resolve("tampered")
    with pytest.raises(FailedPrecondition, match="is a pipe"):
        reg.resolve("manifest-fifo")
    with pytest.raises(FailedPrecondition, match="not a model folder"):
        reg.resolve("plain-file")
    with running_server(["captioning"], FAST, registry=reg) as srv:
        s = Stubs(srv.address)
        for all_versions in (False, True):
            resp = s.list_models(all_versions=all_versions)
            assert [m.name for m in resp.models] == ["good"]
            assert {b.name: b.code for b in resp.broken} == EXPECTED_BROKEN
            assert all(b.reason for b in resp.broken)
        for name, code in EXPECTED_BROKEN.items():
            if not name.startswith("'"):
                assert s.code(s.registry.GetModel, _get(name)).name == code, name
                assert s.code(s.captioning.Caption, _caption(name)).name == code, name
        assert s.get_model("good").version == 1
        assert srv.ctx.metrics.registry.get_sample_value(
            "pixelrpc_requests_total", {"service": "captioning", "method": "GetModel", "code": "INTERNAL", "model": "", "version": ""}) is None
        s.close()
    code, out, err = run_cli("models", "verify", "--registry", str(reg.root))
    assert code == 1 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "6 registry entries failed verification" in err
    assert "good:1" in out and "CORRUPT" in out and "INVALID" in out


def test_unreadable_entries_as_an_unprivileged_user():
    """Permissions only stop non-root users: the server runs as nobody (uid 65534) in a subprocess."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    top = Path(tempfile.mkdtemp(prefix="pixelrpc-perm-"))
    try:
        top.chmod(0o755)
        reg = Registry(top / "registry")
        publish_toy(reg, "good")
        m = publish_toy(reg, "locked-folder")
        (reg.root / "locked-folder").chmod(0o000)
        m = publish_toy(reg, "locked-manifest")
        (reg.model_dir(m) / "manifest.json").chmod(0o000)
        m = publish_toy(reg, "locked-weights")
        (reg.model_dir(m) / "weights.safetensors").chmod(0o000)
        closed = Registry(top / "closed")
        publish_toy(closed, "good")
        closed.root.chmod(0o000)
        for p in (reg.root, *[reg.root / n for n in ("good", "locked-manifest", "locked-weights")]):
            p.chmod(0o755)
        script = textwrap.dedent(f"""
            import json, sys
            sys.path.insert(0, {str(REPO / 'tests')!r})
            from conftest import load_toy
            from registry_helpers import Stubs
            from pixelrpc.models.registry import register_loader
            from pixelrpc.services.settings import Settings
            from pixelrpc.services.testing import running_server
            register_loader("toy", load_toy)
            out = {{}}
            fast = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)
            with running_server(["captioning"], fast, registry={str(reg.root)!r}) as srv:
                s = Stubs(srv.address)
                resp = s.list_models()
                out["models"] = [m.name for m in resp.models]
                out["broken"] = {{b.name: [b.code, b.reason] for b in resp.broken}}
                out["get"] = {{}}
                from pixelrpc.v1 import common_pb2, registry_pb2
                for n in ("good", "locked-folder", "locked-manifest"):
                    req = registry_pb2.GetModelRequest(model=common_pb2.ModelRef(name=n))
                    out["get"][n] = s.code(s.registry.GetModel, req).name
                from registry_helpers import caption_request
                out["caption"] = s.code(s.captioning.Caption, caption_request("locked-weights")).name
                out["registry_health"] = s.status("pixelrpc.v1.ModelRegistry")
            with running_server(["captioning"], fast, registry={str(closed.root)!r}) as srv:
                s = Stubs(srv.address)
                out["closed_list"] = s.code(s.registry.ListModels, registry_pb2.ListModelsRequest()).name
                out["closed_get"] = s.code(s.registry.GetModel, registry_pb2.GetModelRequest(
                    model=common_pb2.ModelRef(name="good"))).name
                out["closed_health"] = s.status("pixelrpc.v1.ModelRegistry")
                out["closed_info"] = s.server_info().registry.state
            print(json.dumps(out))
        """)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-c", script], capture_output=True, text=True, timeout=120, cwd=str(top))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["models"] == ["good", "locked-weights"]  # its manifest is fine: listed, refused at load
        assert {n: c for n, (c, _) in out["broken"].items()} == {
            "locked-folder": "FAILED_PRECONDITION", "locked-manifest": "FAILED_PRECONDITION"}
        assert "permission" in out["broken"]["locked-folder"][1].lower()
        assert out["get"] == {"good": "OK", "locked-folder": "FAILED_PRECONDITION",
                              "locked-manifest": "FAILED_PRECONDITION"}
        assert out["caption"] == "FAILED_PRECONDITION"  # weights unreadable: refused, not INTERNAL
        assert out["registry_health"] == "SERVING"
        assert out["closed_list"] == "UNAVAILABLE" and out["closed_get"] == "UNAVAILABLE"
        assert out["closed_health"] == "NOT_SERVING" and out["closed_info"] == "unreadable"
        code, _out, err = run_cli("models", "verify", "--registry", str(reg.root), user=65534)
        assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        for p in top.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        (top / "closed").chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- sealed manifests
def test_every_single_bit_flip_of_a_manifest_is_detected(registry):
    m = publish_toy(registry, "toy", tasks=("captioning", "feature-extraction"))
    raw = (registry.model_dir(m) / "manifest.json").read_bytes()
    assert Manifest.from_bytes(raw).sha256 == m.sha256
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            with pytest.raises(ModelCorrupt):
                Manifest.from_bytes(bytes(flipped), "toy:1")


def test_a_changed_value_on_disk_is_data_loss_not_used(registry):
    m = publish_toy(registry, "toy", value=1.0)
    path = registry.model_dir(m) / "manifest.json"
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"value": 1.0', b'"value": 3.0'))  # same length, valid JSON
    with pytest.raises(ModelCorrupt, match="digest"):
        registry.resolve("toy")
    with pytest.raises(ModelCorrupt):
        ModelCache(registry).get("toy")


def test_old_unsealed_manifests_are_refused_until_sealed(registry):
    good = publish_toy(registry, "toy")
    bad = publish_toy(registry, "toy")
    _unseal(registry.model_dir(good) / "manifest.json")
    _unseal(registry.model_dir(bad) / "manifest.json")
    with open(registry.model_dir(bad) / "weights.safetensors", "ab") as f:
        f.write(b"x")  # a damaged file: sealing must not bless it
    with pytest.raises(FailedPrecondition, match="pixelrpc models seal"):
        registry.resolve("toy", 1)
    code, out, err = run_cli("models", "seal", "--registry", str(registry.root))
    assert code == 1 and "toy:1      sealed" in out and "NOT SEALED" in out and "Traceback" not in err
    assert registry.resolve("toy", 1).sha256 == good.sha256
    with pytest.raises(FailedPrecondition):
        registry.resolve("toy", 2)
    code, out, _ = run_cli("models", "seal", "toy:1", "--registry", str(registry.root))
    assert code == 0 and "already sealed" in out


# ---------------------------------------------------------------------------------------------- registry away
def test_registry_gone_while_serving_keeps_the_loaded_default_and_recovers(tmp_path):
    root = tmp_path / "registry"
    reg = Registry(root)
    publish_captioner(reg, "tiny-captioner")
    with running_server(["captioning"], FAST, registry=reg) as srv:
        s = Stubs(srv.address)
        first = s.caption()
        assert first.meta.model_name == "tiny-captioner" and first.captions[0].text is not None
        assert s.status("pixelrpc.v1.ModelRegistry") == "SERVING"

        def away(how: str, state: str) -> None:
            parked = tmp_path / "parked"
            os.rename(root, parked)
            if how == "empty":
                root.mkdir()  # an unmounted volume leaves its bare mount point
            elif how == "file":
                root.write_text("not a folder")
            s.wait_status("pixelrpc.v1.ModelRegistry", "NOT_SERVING")
            again = s.caption()  # names no model: the last resolved default keeps answering
            assert (again.meta.model_name, again.meta.model_version) == ("tiny-captioner", 1)
            assert again.captions[0].text == first.captions[0].text
            assert s.caption("tiny-captioner", 1).meta.model_version == 1
            assert s.code(s.registry.ListModels, _list()) == grpc.StatusCode.UNAVAILABLE
            assert s.code(s.registry.GetModel, _get("tiny-captioner")) == grpc.StatusCode.UNAVAILABLE
            info = s.server_info()
            assert (info.registry.state, info.registry.healthy) == (state, False) and info.registry.message
            assert s.status("") == "SERVING" and s.status("pixelrpc.v1.CaptioningService") == "SERVING"
            assert srv.ctx.metrics.registry.get_sample_value("pixelrpc_registry_up") == 0
            if how == "empty":
                root.rmdir()
            elif how == "file":
                root.unlink()
            os.rename(parked, root)  # back: recovery needs no restart
            s.wait_status("pixelrpc.v1.ModelRegistry", "SERVING")
            assert [m.name for m in s.list_models().models] == ["tiny-captioner"]
            assert s.server_info().registry.state == "ok"

        away("deleted", "gone")
        away("empty", "empty")
        away("file", "unreadable")
        publish_captioner(reg, "tiny-captioner", seed=1, golden_seed=1)  # and hot reload still works
        deadline = time.monotonic() + 15
        while s.caption().meta.model_version != 2:
            assert time.monotonic() < deadline, "new default not picked up after recovery"
            time.sleep(0.1)
        s.close()


def _list():
    from pixelrpc.v1 import registry_pb2

    return registry_pb2.ListModelsRequest()


def test_model_folder_replaced_by_a_file_is_failed_precondition(registry):
    publish_toy(registry, "good")
    publish_toy(registry, "gone")
    shutil.rmtree(registry.root / "gone")
    (registry.root / "gone").write_text("oops")
    with pytest.raises(FailedPrecondition, match="not a model folder"):
        registry.resolve("gone")
    assert [m.name for m in registry.list()] == ["good"]
    with pytest.raises(RegistryUnavailable):
        Registry(registry.root / "good" / "1" / "manifest.json").list()


# ---------------------------------------------------------------------------------------------- staging
def _publish_and_hang(root: str, ready) -> None:
    """A live publisher that stops after writing its files (before its manifest)."""
    import pixelrpc.models.registry.store as store

    def hang(*args, **kwargs):
        ready.set()
        time.sleep(120)

    store._write_synced = hang
    publish_toy(Registry(root), "toy", value=5.0)


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _stagings(reg: Registry) -> list[str]:
    return sorted(p.name for p in reg.root.iterdir() if p.name.startswith(".staging-"))


def test_stale_staging_is_cleaned_but_never_under_a_live_publisher(registry):
    publish_toy(registry, "toy")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    live = ctx.Process(target=_publish_and_hang, args=(str(registry.root), ready))
    live.start()
    try:
        assert ready.wait(30), "the publisher did not start"
        (live_name,) = _stagings(registry)
        _age(registry.root / live_name, 3600)
        assert registry.clean_staging(grace_seconds=0) == []  # its lock is held: never removed
        code, out, _ = run_cli("models", "gc", "--grace", "0", "--registry", str(registry.root))
        assert code == 0 and "nothing to clean" in out
        publish_toy(registry, "toy")  # another publisher works beside it and leaves it alone
        assert _stagings(registry) == [live_name]
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.join(10)
    # Killed: its lock is gone. The next publisher removes it once older than the grace period...
    fresh = Path(tempfile.mkdtemp(prefix=".staging-", dir=registry.root))
    assert sorted(_stagings(registry)) == sorted([live_name, fresh.name])
    publish_toy(registry, "toy")
    assert _stagings(registry) == [fresh.name]  # ... but not one younger than it
    (registry.root / ".removing-toy-9-1").mkdir()
    code, out, _ = run_cli("models", "gc", "--grace", "0", "--dry-run", "--registry", str(registry.root))
    assert code == 0 and "would remove" in out and fresh.exists()
    code, out, _ = run_cli("models", "gc", "--grace", "0", "--registry", str(registry.root))
    assert code == 0 and fresh.name in out and ".removing-toy-9-1" in out
    assert _stagings(registry) == [] and registry.versions("toy") == [1, 2, 3]
