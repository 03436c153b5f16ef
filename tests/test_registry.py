"""The model registry: atomic publishing, verification, safe names, caching and hot reload."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
from conftest import ToyModel, publish_toy

from pixelrpc.models.errors import InvalidInput, ModelCorrupt, ModelNotFound, RegistryConflict
from pixelrpc.models.registry import ModelCache, Registry, parse_ref


def test_publish_list_load_round_trip(registry):
    m1 = publish_toy(registry, value=1.0, tasks=("captioning", "feature-extraction"))
    m2 = publish_toy(registry, value=2.0)
    assert (m1.version, m2.version) == (1, 2)
    assert registry.versions("toy") == [1, 2]
    assert registry.default_version("toy") == 2
    assert [m.ref for m in registry.list()] == ["toy:2"]
    assert [m.ref for m in registry.list(all_versions=True)] == ["toy:1", "toy:2"]
    assert [m.ref for m in registry.list("feature-extraction", all_versions=True)] == ["toy:1"]
    again = registry.resolve("toy", 1)
    assert again.sha256 == m1.sha256 and again.sha256 != m2.sha256
    assert again.file("weights.safetensors").size > 0
    loaded = ModelCache(registry).get("toy")
    assert isinstance(loaded.model, ToyModel)
    np.testing.assert_array_equal(loaded.model.weights, np.full((2, 2), 2.0, np.float32))
    registry.set_default("toy", 1)
    assert registry.default_version("toy") == 1


def test_corrupt_file_is_refused(registry):
    m = publish_toy(registry)
    path = registry.model_dir(m) / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelCorrupt, match="sha256"):
        ModelCache(registry).get("toy")
    with pytest.raises(ModelCorrupt):
        registry.verify(m)


def test_missing_file_and_bad_manifest_are_corrupt(registry):
    m = publish_toy(registry)
    (registry.model_dir(m) / "weights.safetensors").unlink()
    with pytest.raises(ModelCorrupt, match="missing"):
        registry.verify(m)
    (registry.model_dir(m) / "manifest.json").write_text("{not json")
    with pytest.raises(ModelCorrupt, match="JSON"):
        registry.resolve("toy", 1)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", ".hidden", "UPPER", "", "x" * 65])
def test_traversal_and_invalid_names_refused(registry, name):
    with pytest.raises(InvalidInput, match="invalid model name"):
        registry.resolve(name)
    with pytest.raises(InvalidInput):
        publish_toy(registry, name=name)
    assert not (registry.root.parent / "x").exists()


def test_parse_ref():
    assert parse_ref("shapes-captioner") == ("shapes-captioner", 0)
    assert parse_ref("m:3") == ("m", 3)
    with pytest.raises(InvalidInput):
        parse_ref("m:latest")


def test_unsafe_file_formats_refused(registry):
    with pytest.raises(InvalidInput, match="safe format"):
        registry.publish("evil", {"model.pkl": b"\x80\x04"}, tasks=["captioning"], framework="numpy")


def test_unknown_model_names_how_to_add_one(registry):
    with pytest.raises(ModelNotFound, match="pixelrpc models bootstrap"):
        registry.resolve("nothing-here")
    publish_toy(registry)
    with pytest.raises(ModelNotFound, match="no version 7"):
        registry.resolve("toy", 7)


def _publish_then_die(root: str) -> None:
    """A publisher that is killed mid-publish: after writing the files, before the rename."""
    import pixelrpc.models.registry.store as store

    def die(*args, **kwargs):
        os._exit(17)

    store.os.rename = die  # type: ignore[attr-defined]
    publish_toy(Registry(root), value=9.0)


def test_crash_mid_publish_leaves_old_version_serving(registry):
    publish_toy(registry, value=1.0)
    cache = ModelCache(registry, refresh_seconds=0)
    before = cache.get("toy")
    proc = multiprocessing.get_context("fork").Process(target=_publish_then_die, args=(str(registry.root),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 17, "the publisher should have died mid-publish"
    assert any(p.name.startswith(".staging-") for p in registry.root.iterdir()), "staging left behind"
    assert registry.versions("toy") == [1]
    assert [m.ref for m in registry.list(all_versions=True)] == ["toy:1"]
    after = cache.get("toy")
    assert after.manifest.sha256 == before.manifest.sha256
    np.testing.assert_array_equal(after.model.weights, 1.0)


def test_racing_publishers_for_one_version_cannot_both_win(registry):
    publish_toy(registry, value=1.0)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def publish(value):
        barrier.wait()
        try:
            publish_toy(registry, value=value, version=2)
            outcomes.append("won")
        except RegistryConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=publish, args=(float(v),)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    m = registry.resolve("toy", 2)
    registry.verify(m)  # the winner's files are intact
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".staging-")]


def test_auto_versioned_concurrent_publishers_all_land(registry):
    threads = [threading.Thread(target=publish_toy, args=(registry,), kwargs={"value": float(v)})
               for v in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.versions("toy") == [1, 2, 3, 4, 5]
    values = sorted(registry.resolve("toy", v).metadata["value"] for v in range(1, 6))
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_cache_picks_up_new_default_and_keeps_old_object_for_in_flight(registry):
    publish_toy(registry, value=1.0)
    cache = ModelCache(registry, refresh_seconds=0.1)
    old = cache.get("toy")
    publish_toy(registry, value=2.0)
    deadline = time.monotonic() + 5
    while cache.get("toy").manifest.version != 2:
        assert time.monotonic() < deadline, "new default version not picked up"
        time.sleep(0.05)
    np.testing.assert_array_equal(old.model.weights, 1.0)  # in-flight holder unaffected
    registry.remove("toy", 2)
    time.sleep(0.15)
    assert cache.get("toy").manifest.version == 1


def test_cache_is_bounded_lru(registry):
    for name in ("a", "b", "c"):
        publish_toy(registry, name=name)
    cache = ModelCache(registry, max_models=2)
    cache.get("a")
    cache.get("b")
    cache.get("a")
    cache.get("c")
    assert cache.is_loaded("a", 1) and cache.is_loaded("c", 1) and not cache.is_loaded("b", 1)


def test_manifest_is_plain_json_with_sha256_per_file(registry):
    m = publish_toy(registry)
    data = json.loads((registry.model_dir(m) / "manifest.json").read_text())
    assert data["name"] == "toy" and data["version"] == 1
    assert len(data["files"][0]["sha256"]) == 64 and data["files"][0]["size"] > 0
    assert data["metadata"]["architecture"] == "toy"
