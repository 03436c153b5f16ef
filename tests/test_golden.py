"""Self-testing registry: golden examples run after loading a version and before it may serve."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time

import pytest
from registry_helpers import Stubs, golden_json, publish_captioner

from pixelrpc.models.registry import GOLDEN_FILE, GoldenFailed, ModelCache, Registry, load_model, run_golden
from pixelrpc.models.registry.golden import compare
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server
from pixelrpc.v1 import registry_pb2

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "pixelrpc.cli", *args], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_compare_exact_and_within_tolerance():
    assert compare({"top1": 3, "p": [0.5, 0.5]}, {"top1": 3, "p": [0.51, 0.49]}, {"p": 0.02}) == []
    assert compare({"top1": 3}, {"top1": 4}, {}) == ["top1 expected 3, got 4"]
    assert compare({"tokens": [1, 2]}, {"tokens": [1, 3]}, {}) == ["tokens expected [1, 2], got [1, 3]"]
    (problem,) = compare({"p": [0.5, 0.5]}, {"p": [0.6, 0.4]}, {"p": 0.02})
    assert "differs by up to 0.1" in problem
    assert compare({"p": [0.5]}, {"p": [float("nan")]}, {"p": 0.1}) != []
    assert compare({"x": 1}, {}, {}) == ["x missing from the outputs"]


def test_golden_examples_pass_on_load_and_fail_for_wrong_weights(registry):
    good = publish_captioner(registry, seed=0, golden_seed=0)
    assert {"golden.json", "params.safetensors"} <= {f.name for f in good.files}  # sha256-listed
    assert [e["kind"] for e in golden_json(registry, good)["examples"]] == ["captioning"] * 3
    loaded = ModelCache(registry).get("tiny-captioner")
    assert loaded.golden.state == "passed" and loaded.golden.examples == 3
    bad = publish_captioner(registry, seed=1, golden_seed=0)  # weights that do not give its golden outputs
    report = run_golden(bad, load_model(registry, bad, "cpu"), lambda f: registry.read_file(bad, f))
    assert report.state == "failed" and report.failures and "tokens" in " ".join(report.failures)
    cache = ModelCache(registry)
    with pytest.raises(GoldenFailed, match="golden example"):
        cache.get("tiny-captioner", 2)
    assert not cache.is_loaded("tiny-captioner", 2)
    with pytest.raises(GoldenFailed):  # no default served yet: nothing to fall back to
        cache.get("tiny-captioner")
    none = publish_captioner(registry, "plain", golden_seed=None)
    assert ModelCache(registry).get("plain").golden.state == "none" and not none.has_file(GOLDEN_FILE)


def test_a_version_failing_its_golden_examples_is_not_swapped_in(registry, caplog):
    publish_captioner(registry, seed=0, golden_seed=0)
    with running_server(["captioning"], FAST, registry=registry) as srv:
        s = Stubs(srv.address)
        first = s.caption()
        assert first.meta.model_version == 1
        caplog.set_level(logging.WARNING, logger="pixelrpc.registry")
        publish_captioner(registry, seed=1, golden_seed=0)  # v2 fails its golden examples
        deadline = time.monotonic() + 15
        while s.get_model("tiny-captioner", 2).golden.state != registry_pb2.GOLDEN_STATE_FAILED:
            assert time.monotonic() < deadline, "the watcher never tried the new default"
            time.sleep(0.05)
        for _ in range(3):  # the old version keeps serving requests that name no version
            again = s.caption()
            assert again.meta.model_version == 1 and again.captions[0].text == first.captions[0].text
        v2 = s.get_model("tiny-captioner", 2)
        assert v2.is_default and not v2.serving and not v2.loaded
        assert v2.golden.examples == 3 and v2.golden.failures and v2.golden.checked.seconds > 0
        v1 = s.get_model("tiny-captioner", 1)
        assert v1.serving and v1.golden.state == registry_pb2.GOLDEN_STATE_PASSED
        assert s.code(s.captioning.Caption, _req(2)).name == "FAILED_PRECONDITION"
        assert srv.ctx.metrics.registry.get_sample_value(
            "pixelrpc_golden_failures_total", {"model": "tiny-captioner:2"}) == 1  # counted once
        swaps = [r for r in caplog.records if "not swapping in tiny-captioner:2" in r.getMessage()]
        assert len(swaps) == 1 and "golden" in swaps[0].getMessage()
        publish_captioner(registry, seed=3, golden_seed=3)  # a good v3 is swapped in
        deadline = time.monotonic() + 15
        while s.caption().meta.model_version != 3:
            assert time.monotonic() < deadline, "good v3 not swapped in"
            time.sleep(0.05)
        assert s.get_model("tiny-captioner", 3).serving
        s.close()


def _req(version: int):
    from registry_helpers import caption_request

    return caption_request("tiny-captioner", version)


def test_bootstrap_writes_golden_examples_and_verify_golden_runs_them(quick_bootstrap, tmp_path):
    reg = quick_bootstrap.registry
    kinds = {}
    for m in reg.list(all_versions=True):
        assert m.has_file(GOLDEN_FILE), m.ref
        examples = golden_json(reg, m)["examples"]
        kinds[m.name] = {e["kind"] for e in examples}
        assert len(examples) >= 3
        for e in examples:
            if e["kind"] == "classification":
                assert m.has_file(e["inputs"]["image"]) and e["inputs"]["image"].endswith(".png")
                assert isinstance(e["expected"]["top1"], int) and len(e["expected"]["probabilities"]) == 18
            else:
                assert e["expected"]["tokens"] and len(e["inputs"]["features"]) == 512
    assert kinds == {"shapes-squeezenet": {"classification"}, "shapes-captioner": {"captioning"}}
    code, out, err = run_cli("models", "verify", "--golden", "--registry", str(reg.root))
    assert code == 0, err
    assert out.count("(golden: 4 passed)") == 2, out
    # A copy whose classifier gets a new version expecting other outputs fails offline, non-zero.
    copy = Registry(tmp_path / "copy")
    shutil.copytree(reg.root, copy.root)
    clf = copy.resolve("shapes-squeezenet")
    golden = golden_json(copy, clf)
    golden["examples"][0]["expected"]["top1"] = (golden["examples"][0]["expected"]["top1"] + 1) % 18
    files = {f.name: copy.read_file(clf, f.name) for f in clf.files}
    files[GOLDEN_FILE] = json.dumps(golden).encode()
    bad = copy.publish(clf.name, files, tasks=clf.tasks, framework=clf.framework, metadata=clf.metadata)
    code, out, err = run_cli("models", "verify", "--golden", f"shapes-squeezenet:{bad.version}",
                             "--registry", str(copy.root))
    assert code == 1 and "GOLDEN FAILED" in out and "top1 expected" in out and "Traceback" not in err
