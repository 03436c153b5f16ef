"""End to end: the three services as separate processes on the quick-bootstrapped registry, driven
through the ``pixelrpc`` command line (each command its own process, as a user would type it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrpc.cli.launcher import start_suite
from pixelrpc.models import bootstrap as bs
from pixelrpc.models.data import shapes

pytestmark = pytest.mark.slow
VOCABULARY = set(shapes.VOCAB["word_to_idx"])


@pytest.fixture(scope="module")
def suite(quick_bootstrap, tmp_path_factory):
    logs = tmp_path_factory.mktemp("e2e-logs")
    suite = start_suite(
        quick_bootstrap.registry.root,
        logs,
        extra_env={"PIXELRPC_TORCH_THREADS": "1", "PIXELRPC_WORKER_THREADS": "2"},
    )
    try:
        suite.wait_healthy(timeout=120)
        yield suite
    finally:
        codes = suite.stop()
        assert codes == {"captioning": 0, "visualization": 0, "style": 0}, codes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two held-out scenes as PNG files, with their labels."""
    folder = tmp_path_factory.mktemp("e2e-scenes")
    out = []
    for i, scene in enumerate(shapes.iter_scenes(4242, 2, bs.SCENE_SIZE)):
        path = folder / f"scene{i}.png"
        Image.fromarray(scene.image).save(path)
        out.append((path, scene))
    return out


def cli(suite, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **suite.env()}
    proc = subprocess.run(
        [sys.executable, "-m", "pixelrpc.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"pixelrpc {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli_json(suite, *args: str):
    return json.loads(cli(suite, *args, "--json").stdout)


def test_caption_unary_and_streamed(suite, scenes, quick_bootstrap):
    path = scenes[0][0]
    unary = cli_json(suite, "caption", path)
    assert unary["model"] == quick_bootstrap.registry.resolve(bs.CAPTIONER_NAME).ref
    assert unary["encoder"] == quick_bootstrap.registry.resolve(bs.CLASSIFIER_NAME).ref
    words = unary["captions"][0]["text"].split()
    assert words and set(words) <= VOCABULARY
    streamed = cli(suite, "caption", path, "--stream").stdout.strip()
    assert streamed.startswith(f"{path}:")
    assert streamed.split(":", 1)[1].split() == words  # greedy: the same caption, word by word
    both = cli_json(suite, "caption", scenes[0][0], scenes[1][0])  # one CaptionStream
    assert [r["input"] for r in both] == [str(scenes[0][0]), str(scenes[1][0])]
    assert both[0]["captions"][0]["text"] == unary["captions"][0]["text"]


def test_classify_and_saliency(suite, scenes, tmp_path, quick_bootstrap):
    path, scene = scenes[0]
    classifier = quick_bootstrap.registry.resolve(bs.CLASSIFIER_NAME)
    classified = cli_json(suite, "classify", path, "--model", bs.CLASSIFIER_NAME, "--top-k", "3")
    predictions = classified["results"][0]["predictions"]
    assert len(predictions) == 3 and predictions[0]["label"] in shapes.CLASS_NAMES
    assert classified["meta"]["model"] == classifier.ref
    assert classified["meta"]["model_sha256"] == classifier.sha256
    out, npy = tmp_path / "saliency.png", tmp_path / "saliency.npy"
    summary = cli_json(
        suite,
        "saliency",
        path,
        "--class",
        scene.label,
        "--model",
        bs.CLASSIFIER_NAME,
        "-o",
        out,
        "--npy",
        npy,
    )
    assert summary["label"] == scene.label_name
    with Image.open(out) as overlay:
        assert overlay.size[0] > 0
    saliency = np.load(npy)
    assert saliency.shape == (summary["input_size"], summary["input_size"]) and np.all(saliency >= 0)


def test_fool_and_dream(suite, scenes, tmp_path):
    path, scene = scenes[0]
    target = (scene.label + 1) % len(shapes.CLASS_NAMES)
    fooled = cli_json(
        suite,
        "fool",
        path,
        "--target-class",
        target,
        "--model",
        bs.CLASSIFIER_NAME,
        "--max-iterations",
        "20",
        "-o",
        tmp_path / "fool.png",
    )
    assert fooled["iterations"] >= 1 and (tmp_path / "fool.png").is_file()
    dream = cli_json(
        suite,
        "dream",
        "--class",
        scene.label,
        "--model",
        bs.CLASSIFIER_NAME,
        "--iterations",
        "6",
        "--show-every",
        "3",
        "--seed",
        "1",
        "-o",
        tmp_path / "dream.png",
        "--previews",
        tmp_path / "previews",
    )
    assert (tmp_path / "dream.png").is_file()
    assert dream["iterations"] == 6
    assert len(list((tmp_path / "previews").glob("*.png"))) >= 1


@pytest.mark.parametrize("unary", [False, True], ids=["streamed", "unary"])
def test_style(suite, scenes, tmp_path, unary):
    content, style = scenes[0][0], scenes[1][0]
    out = tmp_path / "styled.png"
    args = [
        "style",
        content,
        style,
        "--model",
        bs.CLASSIFIER_NAME,
        "--size",
        "48",
        "--style-size",
        "48",
        "--iterations",
        "4",
        "--seed",
        "3",
        "-o",
        out,
    ]
    if unary:
        args.append("--unary")
    else:
        args += ["--previews", tmp_path / "previews", "--preview-every", "2"]
    summary = cli_json(suite, *args)
    assert summary["model"] == bs.CLASSIFIER_NAME
    with Image.open(out) as img:
        assert min(img.size) == 48
    if not unary:
        assert len(list((tmp_path / "previews").glob("*.png"))) == 2


def test_models_list_from_each_running_service(suite, quick_bootstrap):
    """Each service lists the registry's models of the tasks it serves."""
    registry = quick_bootstrap.registry
    for name, task in (
        ("captioning", "captioning"),
        ("visualization", "classification"),
        ("style", "feature-extraction"),
    ):
        rows = cli_json(suite, "models", "list", "--addr", suite.address(name))
        assert {f"{r['name']}:{r['version']}" for r in rows} == {m.ref for m in registry.list(task)}
        assert all(r["sha256"] == registry.resolve(r["name"], r["version"]).sha256 for r in rows)
    text = cli(suite, "models", "list", "--addr", suite.address("visualization")).stdout
    assert bs.CLASSIFIER_NAME in text and bs.CAPTIONER_NAME not in text


def test_health_through_the_cli(suite):
    for name in ("captioning", "visualization", "style"):
        cli(suite, "health", "--addr", suite.address(name))


def test_the_suite_logged_each_service(suite):
    for svc in suite.services.values():
        assert Path(svc.log_path).is_file()


def test_demo_on_a_copy_of_the_quick_registry(quick_bootstrap, tmp_path):
    """``make demo``'s program, shortened: every job runs, the gallery links only files it wrote."""
    import re
    import shutil

    registry = tmp_path / "registry"
    shutil.copytree(quick_bootstrap.registry.root, registry)  # the demo may import the Caffe trunk into it
    out = tmp_path / "demo-output"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixelrpc.cli.demo",
            "--registry",
            str(registry),
            "--output",
            str(out),
            "--style-iterations",
            "4",
            "--vis-iterations",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stopped cleanly" in proc.stdout and "summary" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["captions"]["captions"]) == 16
    assert summary["service_exit_codes"] == {"captioning": 0, "visualization": 0, "style": 0}
    page = (out / "index.html").read_text()
    linked = set(re.findall(r'src="([^"]+)"', page))
    assert {"fooling_comparison.png", "dream.png", "style_scene.png", "saliency_0_overlay.png"} <= linked
    assert all((out / src).is_file() for src in linked)
    for i in range(16):
        assert summary["captions"]["captions"][str(i)] in page
