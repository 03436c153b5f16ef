"""``pixelrpc classify | saliency | fool | dream`` and ``pixelrpc models import squeezenet1_1[-caffe]``."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import shared_path
from PIL import Image

from pixelrpc.cli import cli, main
from pixelrpc.models import zoo
from pixelrpc.models.registry import ModelCache, Registry
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

NAMES = ["ant", "bee", "cat"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    torch.manual_seed(0)
    zoo.publish_squeezenet(reg, "squeezenet1_1", zoo.build_squeezenet(3).eval(), class_names=NAMES, input_size=32)
    with running_server(["visualization"], Settings(shutdown_delay=0.0), registry=reg) as srv:
        yield srv


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_classify_json(server, picture):
    out = json.loads(invoke("classify", str(picture), str(picture), "--addr", server.address, "--top-k", "2",
                            "--json").stdout)
    assert out["input_size"] == 32 and len(out["results"]) == 2
    preds = out["results"][0]["predictions"]
    assert len(preds) == 2 and preds[0]["label"] in NAMES and preds[0]["probability"] >= preds[1]["probability"]
    assert out["meta"]["model"] == "squeezenet1_1:1"


def test_saliency_writes_overlay_heatmap_and_array(server, picture, tmp_path):
    out = tmp_path / "sal.png"
    result = invoke("saliency", str(picture), "--label", "auto", "-o", str(out), "--heatmap",
                    str(tmp_path / "heat.png"), "--npy", str(tmp_path / "map.npy"), "--addr", server.address,
                    "--json")
    summary = json.loads(result.stdout)
    assert summary["class"] == summary["predicted_class"]
    assert Image.open(out).size == (32, 32) and Image.open(tmp_path / "heat.png").size == (32, 32)
    assert np.load(tmp_path / "map.npy").shape == (32, 32)
    r = invoke("saliency", str(picture), "--class", "1", "--method", "integrated-gradients", "--steps", "4",
               "-o", str(tmp_path / "ig.jpg"), "--addr", server.address, "--json")
    assert json.loads(r.stdout)["class"] == 1 and Image.open(tmp_path / "ig.jpg").format == "JPEG"
    bad = CliRunner().invoke(cli, ["saliency", str(picture), "-o", str(out), "--addr", server.address])
    assert bad.exit_code != 0 and "--class C or --label auto" in bad.output


def test_fool_and_dream(server, picture, tmp_path):
    r = invoke("fool", str(picture), "--target-class", "2", "-o", str(tmp_path / "fool.png"), "--comparison",
               str(tmp_path / "cmp.png"), "--max-iterations", "5", "--addr", server.address, "--json")
    summary = json.loads(r.stdout)
    assert summary["iterations"] <= 5 and summary["succeeded"] == (summary["predicted"]["class"] == 2)
    assert Image.open(tmp_path / "cmp.png").size == (96, 46)
    r = invoke("dream", "--class", "1", "-o", str(tmp_path / "dream.png"), "--iterations", "4", "--show-every",
               "2", "--seed", "3", "--previews", str(tmp_path / "previews"), "--addr", server.address, "--json")
    summary = json.loads(r.stdout)
    assert summary["iterations"] == 4 and summary["meta"]["seed"] == 3 and summary["label"] == "bee"
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == [
        "iteration-00001.png", "iteration-00002.png", "iteration-00004.png"]


def test_server_errors_are_one_line(server, picture, capsys):
    code = main(["fool", str(picture), "--target-class", "9", "-o", "x.png", "--addr", server.address])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the (empty) progress bar
    assert code == 1 and last.startswith("error: INVALID_ARGUMENT: target_class 9 is out of range")
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- models import
def test_import_torchvision_weights(tmp_path):
    torch.manual_seed(1)
    net = zoo.build_squeezenet(1000).eval()
    pth = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    torch.save(net.state_dict(), pth)
    reg = tmp_path / "reg"
    r = invoke("models", "import", "squeezenet1_1", "--torchvision-weights", str(pth), "--registry", str(reg),
               "--json")
    summary = json.loads(r.stdout)
    assert summary["model"] == "squeezenet1_1:1" and summary["num_classes"] == 1000
    loaded = ModelCache(Registry(reg)).get("squeezenet1_1").model
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():  # the same weights in the layout a CPU-served model keeps: the same bits
        assert torch.equal(loaded(x), net.to(memory_format=zoo.memory_format_for("cpu"))(x))
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    bad = CliRunner().invoke(cli, ["models", "import", "squeezenet1_1", "--torchvision-weights", str(pth),
                                   "--class-names", str(names), "--registry", str(reg)])
    assert bad.exit_code != 0
    neither = CliRunner().invoke(cli, ["models", "import", "squeezenet1_1", "--registry", str(reg)])
    assert neither.exit_code != 0 and "exactly one of" in neither.output


def test_from_torchvision_offline_fails_clearly(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(["models", "import", "squeezenet1_1", "--from-torchvision", "--registry", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "offline" in err and "--torchvision-weights" in err
    assert not (tmp_path / "r").exists() or Registry(tmp_path / "r").names() == []


def test_import_caffe_mat(tmp_path):
    mat = shared_path("sqz_notop.mat")
    r = invoke("models", "import", "squeezenet1_1-caffe", "--caffe-mat", str(mat), "--registry",
               str(tmp_path / "reg"), "--json")
    summary = json.loads(r.stdout)
    assert summary["num_parameters"] == 722_496 and summary["tasks"] == ["feature-extraction"]
    assert summary["architecture"] == "squeezenet1_1-features"
