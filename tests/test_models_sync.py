"""``pixelrpc models sync``: a registry copied from local and in-memory fsspec sources, verified.

The registries here are published with plain bytes (no model is trained or loaded): sync only copies
and hashes files, it never deserializes them.
"""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import pytest
from click.testing import CliRunner

from pixelrpc.cli import cli
from pixelrpc.models.errors import FailedPrecondition, ModelCorrupt, RegistryConflict
from pixelrpc.models.registry import Registry
from pixelrpc.models.registry.sync import MARKER, sync_complete, sync_registry


def make_source(root) -> Registry:
    reg = Registry(root)
    reg.publish("alpha", {"weights.safetensors": b"A" * 3000, "vocab.json": b'{"a": 1}'},
                tasks=["captioning"], framework="numpy")
    reg.publish("alpha", {"weights.safetensors": b"B" * 5000}, tasks=["captioning"], framework="numpy")
    reg.publish("beta", {"weights.safetensors": os.urandom(2 * 1024 * 1024 + 17)},
                tasks=["classification"], framework="torch")
    reg.set_default("alpha", 1)
    return reg


def upload(local_root, url: str) -> None:
    """Copy a local registry folder into an fsspec filesystem, byte for byte."""
    fs, root = fsspec.core.url_to_fs(url)
    for dirpath, _dirs, files in os.walk(local_root):
        rel = os.path.relpath(dirpath, local_root)
        for f in files:
            target = root if rel == "." else f"{root}/{rel}"
            with open(os.path.join(dirpath, f), "rb") as src:
                fs.pipe_file(f"{target}/{f}", src.read())


def assert_same_registry(src: Registry, dest: Registry) -> None:
    for name in src.names():
        assert dest.versions(name) == src.versions(name)
        assert dest.default_version(name) == src.default_version(name)
        for v in src.versions(name):
            m = dest.resolve(name, v)
            dest.verify(m)  # the registry's own check over the copy
            assert m.sha256 == src.resolve(name, v).sha256


def test_sync_from_a_local_folder_copies_every_version_and_the_pins(tmp_path):
    src = make_source(tmp_path / "src")
    report = sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    assert sorted(report.copied) == ["alpha:1", "alpha:2", "beta:1"]
    assert_same_registry(src, Registry(tmp_path / "dest"))
    marker = sync_complete(tmp_path / "dest")
    assert marker is not None and marker["versions"] == ["alpha:1", "alpha:2", "beta:1"]
    assert not [p for p in os.listdir(tmp_path / "dest") if p.startswith(".staging")]

    again = sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    assert again.copied == [] and sorted(again.unchanged) == ["alpha:1", "alpha:2", "beta:1"]


def test_sync_from_memory_filesystem(tmp_path):
    make_source(tmp_path / "local")
    url = f"memory://reg-{uuid.uuid4().hex}"
    upload(tmp_path / "local", url)
    report = sync_registry(url, tmp_path / "dest", names=["beta"])
    assert report.copied == ["beta:1"]
    assert Registry(tmp_path / "dest").names() == ["beta"]
    assert report.bytes_copied == 2 * 1024 * 1024 + 17


def test_a_corrupted_file_refuses_the_whole_sync_and_leaves_nothing_complete(tmp_path):
    make_source(tmp_path / "local")
    url = f"memory://reg-{uuid.uuid4().hex}"
    upload(tmp_path / "local", url)
    fs, root = fsspec.core.url_to_fs(url)
    # Same size, one byte flipped: only the sha256 can tell.
    path = f"{root}/beta/1/weights.safetensors"
    data = bytearray(fs.cat_file(path))
    data[1000] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with pytest.raises(ModelCorrupt, match="beta:1.*does not match its manifest"):
        sync_registry(url, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert sync_complete(dest) is None
    assert os.listdir(dest) == []  # no version of the good models either, no staging left

    # A good sync, then a damaged source: the marker of the good sync is gone, the good copy stays.
    good = f"memory://reg-{uuid.uuid4().hex}"
    upload(tmp_path / "local", good)
    sync_registry(good, dest)
    assert sync_complete(dest) is not None
    with pytest.raises(ModelCorrupt):
        sync_registry(url, tmp_path / "dest2")
    fs.pipe_file(f"{root}/alpha/3/manifest.json", b"{}")  # a new, unsealed version at the source
    with pytest.raises(ModelCorrupt):
        sync_registry(url, dest)
    assert sync_complete(dest) is None
    assert Registry(dest).versions("alpha") == [1, 2]


def test_a_truncated_file_and_a_changed_manifest_are_refused(tmp_path):
    make_source(tmp_path / "src")
    weights = tmp_path / "src" / "alpha" / "2" / "weights.safetensors"
    weights.write_bytes(b"B" * 4999)
    with pytest.raises(ModelCorrupt, match="size 4999 != 5000"):
        sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    weights.write_bytes(b"B" * 5000)
    manifest = tmp_path / "src" / "alpha" / "1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"numpy"', '"torch"'))
    with pytest.raises(ModelCorrupt, match="does not match its digest"):
        sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    assert sync_complete(tmp_path / "dest") is None


def test_damaged_dest_copy_is_replaced_and_conflicting_one_refused(tmp_path):
    make_source(tmp_path / "src")
    sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    (tmp_path / "dest" / "beta" / "1" / "weights.safetensors").write_bytes(b"rot")
    report = sync_registry(str(tmp_path / "src"), tmp_path / "dest")
    assert report.copied == ["beta:1"]
    Registry(tmp_path / "dest").verify(Registry(tmp_path / "dest").resolve("beta", 1))

    other = Registry(tmp_path / "other")
    other.publish("beta", {"weights.safetensors": b"different"}, tasks=["classification"], framework="torch")
    with pytest.raises(RegistryConflict, match="other content"):
        sync_registry(str(tmp_path / "other"), tmp_path / "dest")


def test_empty_or_missing_source_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FailedPrecondition, match="holds no model versions"):
        sync_registry(str(tmp_path / "empty"), tmp_path / "dest")
    make_source(tmp_path / "src")
    with pytest.raises(FailedPrecondition, match="has no model gamma"):
        sync_registry(str(tmp_path / "src"), tmp_path / "dest", names=["gamma"])


def test_cli_sync_json_and_refusal(tmp_path):
    make_source(tmp_path / "src")
    runner = CliRunner()
    r = runner.invoke(cli, ["models", "sync", str(tmp_path / "src"), str(tmp_path / "dest"), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.output)["copied"]) == ["alpha:1", "alpha:2", "beta:1"]
    assert (tmp_path / "dest" / MARKER).is_file()

    (tmp_path / "src" / "alpha" / "1" / "vocab.json").write_bytes(b'{"a": 2}')
    r = runner.invoke(cli, ["models", "sync", str(tmp_path / "src"), str(tmp_path / "dest2")])
    assert r.exit_code == 1
    assert "alpha:1" in r.output and "vocab.json" in r.output and "nothing was synced" in r.output
    r = runner.invoke(cli, ["models", "sync", "nosuchproto://x", str(tmp_path / "dest3")])
    assert r.exit_code != 0 and "Traceback" not in r.output
