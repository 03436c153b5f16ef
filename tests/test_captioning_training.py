"""The COCO captioning layout, BLEU, training, evaluation, publishing and feature extraction.

The data are generated here in exactly the CS231n layout: a toy world of coloured shapes whose
feature vectors encode (size, colour, shape) plus noise, each image with 2-3 paraphrased captions.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pixelrpc.models.captioning.bleu import corpus_bleu_scores, id_tokens, text_tokens
from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN
from pixelrpc.models.captioning.data import (
    CAPTIONS_FILE,
    VOCAB_FILE,
    CocoCaptioningData,
    decode_captions,
    default_feature_file,
    write_captions,
    write_features,
    write_vocab,
)
from pixelrpc.models.captioning.training import CaptionerTraining, TrainConfig, evaluate_captioner
from pixelrpc.models.errors import FailedPrecondition
from pixelrpc.models.registry import ModelCache, Registry

SPECIAL = ["<NULL>", "<START>", "<END>", "<UNK>"]
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "big"]
WORDS = SPECIAL + ["a", "the", "picture", "of", "is", "there", "one"] + COLOURS + SHAPES + SIZES
W2I = {w: i for i, w in enumerate(WORDS)}
T1 = 10  # caption length in the h5 (T + 1)


def make_world(n_images: int, seed: int, dim: int = 24):
    """Features (n_images, dim) and captions (Ncap, T1) with their image indices."""
    rng = np.random.default_rng(seed)
    codebook = np.random.default_rng(99).standard_normal((len(SIZES) + len(COLOURS) + len(SHAPES), dim))
    features, captions, image_idxs = [], [], []
    for i in range(n_images):
        z, c, s = rng.integers(len(SIZES)), rng.integers(len(COLOURS)), rng.integers(len(SHAPES))
        code = codebook[z] + codebook[2 + c] + codebook[6 + s]
        features.append(code + 0.1 * rng.standard_normal(dim))
        texts = [f"a {SIZES[z]} {COLOURS[c]} {SHAPES[s]}",
                 f"a picture of a {COLOURS[c]} {SHAPES[s]}",
                 f"the {SHAPES[s]} is {COLOURS[c]}"]
        for text in texts[: 2 + i % 2]:
            row = np.zeros(T1, dtype=np.int32)
            ids = [W2I["<START>"]] + [W2I[w] for w in text.split()] + [W2I["<END>"]]
            row[: len(ids)] = ids
            captions.append(row)
            image_idxs.append(i)
    return np.array(features, dtype=np.float32), np.array(captions), np.array(image_idxs)


def write_world(folder, n_train=60, n_val=20, pca_dim=None):
    folder.mkdir(parents=True, exist_ok=True)
    train_f, train_c, train_i = make_world(n_train, seed=1)
    val_f, val_c, val_i = make_world(n_val, seed=2)
    write_vocab(folder / VOCAB_FILE, WORDS)
    write_captions(folder / CAPTIONS_FILE, {"train": (train_c, train_i), "val": (val_c, val_i)})
    write_features(folder / default_feature_file("train"), train_f)
    write_features(folder / default_feature_file("val"), val_f)
    if pca_dim:
        write_features(folder / default_feature_file("train", pca=True), train_f[:, :pca_dim])
        write_features(folder / default_feature_file("val", pca=True), val_f[:, :pca_dim])
    return {"train": (train_f, train_c, train_i), "val": (val_f, val_c, val_i)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    return folder, write_world(folder, pca_dim=8)


# ----------------------------------------------------------------------------- data


def test_loader_reads_the_cs231n_layout(world):
    folder, arrays = world
    train_f, train_c, train_i = arrays["train"]
    with CocoCaptioningData.open(folder) as data:
        assert data.idx_to_word == WORDS and data.word_to_idx["<END>"] == 2
        assert data.feature_dim == 24 and data.encoder is None
        split = data.split("train")
        assert split.num_captions == len(train_c)
        rows = np.array([5, 0, 5, 17])  # unsorted with a repeat
        captions, features, image_idxs = split.batch(rows)
        np.testing.assert_array_equal(captions, train_c[rows])
        np.testing.assert_array_equal(features, train_f[train_i[rows]])
        assert decode_captions(captions[0], data.idx_to_word) == " ".join(
            w for w in (WORDS[t] for t in train_c[5]) if w not in ("<START>", "<END>", "<NULL>"))
        order = [c for c, _ in split.minibatches(7, np.random.default_rng(0))]
        assert sorted(map(tuple, np.concatenate(order))) == sorted(map(tuple, train_c))  # each caption once
        assert [len(c) for c in order] == [7] * (len(train_c) // 7) + [len(train_c) % 7] * (len(train_c) % 7 > 0)
    with CocoCaptioningData.open(folder, pca=True) as data:
        assert data.feature_dim == 8


def test_features_are_read_per_minibatch_with_sorted_unique_indices(world, monkeypatch):
    folder, _ = world
    with CocoCaptioningData.open(folder) as data:
        split = data.split("train")
        requests = []
        real = split.features.dataset

        class Recorder:
            shape, ndim = real.shape, real.ndim

            def __getitem__(self, idx):
                requests.append(np.asarray(idx))
                return real[idx]

        split.features.dataset = Recorder()
        for _ in split.minibatches(9, np.random.default_rng(1)):
            pass
    assert requests and all(len(r) <= 9 for r in requests)
    for r in requests:
        assert np.all(np.diff(r) > 0), "h5py fancy indexing needs sorted unique indices"


def test_clear_errors_for_missing_or_mismatched_files(tmp_path, world):
    folder, arrays = world
    with pytest.raises(FailedPrecondition, match="features extract"):
        CocoCaptioningData.open(folder, train_features="nope.h5")
    small = tmp_path / "small.h5"
    write_features(small, arrays["train"][0][:5])
    with pytest.raises(FailedPrecondition, match="has only 5 rows"):
        CocoCaptioningData.open(folder, train_features=small)
    with pytest.raises(FailedPrecondition, match="not a CS231n captioning folder"):
        CocoCaptioningData.open(tmp_path)


def test_real_vocabulary_loads(tmp_path):
    from conftest import shared_path

    from pixelrpc.models.captioning.data import load_vocab

    idx_to_word, word_to_idx = load_vocab(shared_path("coco2014_vocab.json"))
    assert len(idx_to_word) == 1004 and idx_to_word[:4] == SPECIAL
    CaptioningRNN(word_to_idx, seed=0)  # a model over the real vocabulary builds


# ----------------------------------------------------------------------------- BLEU


def test_bleu_hand_computed():
    refs = [[text_tokens("<START> a cat on a mat <END>")]]
    hyp = [text_tokens("A cat on the mat")]
    scores = corpus_bleu_scores(refs, hyp)
    # unigrams: a, cat, on, mat match (the does not): 4/5; bigrams: "a cat", "cat on": 2/4; same length.
    assert scores["bleu1"] == pytest.approx(0.8)
    assert scores["bleu2"] == pytest.approx(math.sqrt(0.8 * 0.5))
    # trigrams: "a cat on" 1/3; BLEU-3 = (0.8 * 0.5 * 1/3) ** (1/3)
    assert scores["bleu3"] == pytest.approx((0.8 * 0.5 / 3) ** (1 / 3))
    assert scores["bleu4"] < 1e-10  # no matching 4-gram, no smoothing
    perfect = corpus_bleu_scores([[["a", "b", "c", "d"], ["x"]]], [["a", "b", "c", "d"]])
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    assert id_tokens([1, 4, 5, 2, 9, 9], WORDS) == ["a", "the"]


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss_validates_and_publishes(world, tmp_path):
    folder, _ = world
    config = TrainConfig(cell_type="lstm", hidden_dim=32, wordvec_dim=16, epochs=6, batch_size=25,
                         learning_rate=1e-2, lr_decay=0.95, val_images=None)
    with CocoCaptioningData.open(folder) as data:
        training = CaptionerTraining(data, config)
        untrained = evaluate_captioner(training.model, data, "val")
        steps = list(training.run())
        per_epoch = training.solver.iterations_per_epoch()
        assert len(steps) == 6 * per_epoch
        losses = training.loss_history
        assert np.mean(losses[-per_epoch:]) < 0.5 * np.mean(losses[:per_epoch])
        validations = [s.validation for s in steps if s.validation is not None]
        assert len(validations) == 6 and all(set(v) >= {"bleu1", "bleu4", "images"} for v in validations)
        trained = evaluate_captioner(training.model, data, "val")
        assert trained["bleu1"] > untrained["bleu1"] + 0.2
        assert trained["images"] == 20

        paths = training.save_run(tmp_path / "run")
        assert paths["loss_curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        history = json.loads(paths["history"].read_text())
        assert history["loss"] == pytest.approx(losses) and len(history["validation"]) == 6

        registry = Registry(tmp_path / "registry")
        manifest = training.publish(registry, "toy-captioner")
    meta = manifest.metadata
    assert meta["training"]["config"]["cell_type"] == "lstm" and meta["encoder"] is None
    assert meta["metrics"]["val"]["bleu1"] == pytest.approx(validations[-1]["bleu1"])
    assert {f.name for f in manifest.files} == {"params.safetensors", "loss_curve.png"}
    loaded = ModelCache(registry).get("toy-captioner").model
    np.testing.assert_array_equal(loaded.params["Wx"], training.model.params["Wx"])


def test_cli_trains_evaluates_and_extracts(world, tmp_path):
    import torch

    from pixelrpc.cli import cli
    from pixelrpc.models import zoo

    folder, _ = world
    registry = tmp_path / "registry"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "captioner", "--data", str(folder), "--cell", "rnn", "--hidden", "16",
                                 "--wordvec", "8", "--epochs", "2", "--batch-size", "50", "--val-images", "10",
                                 "--publish", "cli-captioner", "--registry", str(registry),
                                 "--run-dir", str(tmp_path / "run"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["model"] == "cli-captioner:1" and (tmp_path / "run" / "loss_curve.png").is_file()

    result = runner.invoke(cli, ["eval", "captioner", "cli-captioner", "--data", str(folder),
                                 "--registry", str(registry), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output[result.output.index("{"):])
    assert scores["images"] == 20 and 0.0 <= scores["bleu4"] <= scores["bleu1"] <= 1.0

    # Feature extraction with a registered encoder (a random SqueezeNet trunk at 32 px).
    torch.manual_seed(0)
    encoder = zoo.publish_squeezenet(Registry(registry), "tiny-encoder", zoo.build_squeezenet_features().eval(),
                                     class_names=[], tasks=("feature-extraction",), input_size=32)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(3)
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "feats.h5"
    result = runner.invoke(cli, ["features", "extract", "--encoder", "tiny-encoder", "--images", str(images),
                                 "--out", str(out), "--registry", str(registry), "--batch-size", "2", "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert [n.decode() for n in f["names"][()]] == ["a.png", "b.png", "c.jpg"]
        assert f["features"].shape == (3, 512)
        assert f.attrs["encoder_sha256"] == encoder.sha256 and f.attrs["encoder_version"] == 1
        got = f["features"][()]
    model = ModelCache(Registry(registry)).get("tiny-encoder").model
    from pixelrpc.models.captioning.features import embed_images

    with Image.open(images / "c.jpg") as img:
        np.testing.assert_allclose(got[2], embed_images(model, [img.convert("RGB")])[0], rtol=1e-4, atol=1e-5)
