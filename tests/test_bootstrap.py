"""The bootstrap of the default models: recipes, gates, publishing, and the three services on its models.

The QUICK plan runs once per session (``conftest_bootstrap``); the rest is small and fast.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrpc.models import bootstrap as bs
from pixelrpc.models.captioning.bleu import corpus_bleu_scores
from pixelrpc.models.data import shapes
from pixelrpc.models.errors import InvalidInput
from pixelrpc.models.registry import Registry, load_model


def held_out_scene(index: int = 0, seed: int = 12345) -> shapes.Scene:
    return list(shapes.iter_scenes(seed, index + 1, bs.SCENE_SIZE))[index]


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Pieces


def test_slot_targets_put_the_labelled_object_first():
    batch = shapes.generate_batch(3, 40, bs.SCENE_SIZE, with_masks=False)
    t = bs.slot_targets(batch)
    label_shape, label_colour = divmod(batch.labels, len(shapes.COLOUR_NAMES))
    assert np.array_equal(t["shape"][:, 0], label_shape)
    assert np.array_equal(t["colour"][:, 0], label_colour)
    assert np.array_equal(t["present"].sum(1), batch.num_objects)
    empty = ~t["present"]
    assert np.all(t["shape"][empty] == len(shapes.SHAPES)) and np.all(t["colour"][empty] == -100)
    assert np.all((t["centre"][t["present"]] > 0) & (t["centre"][t["present"]] < 1))


def test_coverage_maps_are_the_masks_as_class_channels():
    batch = shapes.generate_batch(5, 6, bs.SCENE_SIZE, with_masks=True)
    classes = bs.object_classes(batch)
    cover = bs.coverage_maps(batch.masks, classes).numpy()  # (N, 19, H, W)
    assert np.allclose(cover.sum(1), 1.0)
    for n in range(len(batch)):
        for k in range(batch.num_objects[n]):
            assert np.all(cover[n, classes[n, k]][batch.masks[n, k]] == 1.0)
        assert np.array_equal(cover[n, bs.BACKGROUND] == 1.0, ~batch.masks[n].any(0))
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(cover), (23, 23)
    )  # a 96-px trunk's grid
    assert torch.allclose(pooled.sum(1), torch.ones(6, 23, 23), atol=1e-5)


def test_relation_targets_follow_the_caption_grammar():
    """Every relation a generated caption states between two objects is one relation_targets accepts."""
    batch = shapes.generate_batch(9, 200, bs.SCENE_SIZE, with_masks=False)
    t = bs.slot_targets(batch)
    checked = 0
    for n in np.nonzero(batch.num_objects == 2)[0]:
        names = [
            shapes.class_index(shapes.SHAPES[t["shape"][n, k]], shapes.COLOUR_NAMES[t["colour"][n, k]])
            for k in range(2)
        ]
        if names[0] == names[1]:
            continue
        allowed = {
            w for w, ok in zip(bs.RELATION_WORDS, t["relation"][n, 0], strict=True) if ok
        }  # slot 1 vs 0
        for caption in batch.captions[n]:
            words = caption.split()
            named = bs.mentioned_classes(words)
            relation = next(w for w in words if w in ("left", "right", "above", "over", "below", "under"))
            relation = {"over": "above", "under": "below"}.get(relation, relation)
            subject = named[1] if bs.is_inverted_wording(words) else named[0]  # "S <relation> of O"
            if subject == names[1]:
                assert relation in allowed, (caption, allowed)
            else:
                flipped = {"left": "right", "right": "left", "above": "below", "below": "above"}[relation]
                assert flipped in allowed, (caption, allowed)
            checked += 1
    assert checked > 100
    assert t["related"][:, 0].sum() == (batch.num_objects >= 2).sum()


def test_scene_description_layout():
    batch = shapes.generate_batch(4, 50, bs.SCENE_SIZE, with_masks=False)
    d = bs.scene_description(
        batch.num_objects, batch.shapes, batch.colours, batch.sizes, batch.centres, bs.SCENE_SIZE
    )
    assert d.shape == (50, 72)
    per_slot = d[:, :42].reshape(50, 3, 14)
    assert np.all(per_slot[..., :4].sum(-1) == 1)  # shape or "empty"
    present = np.arange(3)[None, :] < batch.num_objects[:, None]
    assert np.array_equal(per_slot[..., 4:10].sum(-1) == 1, present)  # a colour exactly where an object is
    assert np.array_equal(
        d[:, 54:].sum(1),
        [
            len({(s, c) for s, c in zip(batch.shapes[i, :k], batch.colours[i, :k], strict=True)})
            for i, k in enumerate(batch.num_objects)
        ],
    )


def test_preferred_captions_name_the_largest_object_first_when_they_can():
    from pixelrpc.models.data import coco_layout

    batch = shapes.generate_batch(21, 300, bs.SCENE_SIZE, with_masks=False)
    vocab = shapes.VOCAB
    captions, image_idxs = coco_layout.encode_captions(batch.captions, vocab["word_to_idx"])
    classes = batch.shapes.astype(np.int64) * len(shapes.COLOUR_NAMES) + batch.colours
    largest_two = bs.largest_two_classes(batch.num_objects, classes)
    assert np.array_equal(largest_two[:, 0], batch.labels)
    keep = bs.preferred_captions(captions, image_idxs, largest_two, vocab["idx_to_word"])
    assert set(image_idxs[keep]) == set(range(300))  # every image keeps at least one caption
    for i, texts in enumerate(batch.captions):
        firsts = [bs.mentioned_classes(c.split())[0] == batch.labels[i] for c in texts]
        kept = [c for c, row in zip(texts, np.nonzero(image_idxs == i)[0], strict=True) if keep[row]]
        if any(firsts):
            assert all(bs.mentioned_classes(c.split())[0] == batch.labels[i] for c in kept)
        if any(f and not bs.is_inverted_wording(c.split()) for f, c in zip(firsts, texts, strict=True)):
            assert not any(bs.is_inverted_wording(c.split()) for c in kept)
    assert keep.sum() < len(keep)


def test_folding_the_standardisation_keeps_every_output():
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN

    rng = np.random.default_rng(0)
    model = CaptioningRNN(
        shapes.VOCAB["word_to_idx"],
        input_dim=12,
        wordvec_dim=6,
        hidden_dim=8,
        cell_type="lstm",
        dtype=np.float64,
        seed=0,
    )
    raw = rng.normal(3.0, 5.0, size=(20, 12))
    mean, std = raw.mean(0), raw.std(0)
    captions = rng.integers(0, len(shapes.VOCAB["idx_to_word"]), size=(20, 9))
    before, _ = model.loss((raw - mean) / std, captions)
    bs.fold_standardisation(model, mean, std)
    after, _ = model.loss(raw, captions)
    assert after == pytest.approx(before, rel=1e-12)


def test_probe_initialisation_puts_the_description_into_h0():
    from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN

    rng = np.random.default_rng(1)
    description = rng.normal(size=(400, 5))
    mixing = rng.normal(size=(5, 30))
    features = description @ mixing + 0.01 * rng.normal(size=(400, 30))  # (N, D)
    model = CaptioningRNN(
        shapes.VOCAB["word_to_idx"],
        input_dim=30,
        wordvec_dim=4,
        hidden_dim=8,
        cell_type="lstm",
        dtype=np.float64,
        seed=0,
    )
    untouched = model.params["W_proj"][:, 5:].copy()
    bs.init_projection_from_probe(model, features, description, gain=2.0)
    h0 = features @ model.params["W_proj"] + model.params["b_proj"]  # (N, H)
    for q in range(5):
        assert np.corrcoef(h0[:, q], description[:, q])[0, 1] > 0.999
        assert h0[:, q].std() == pytest.approx(2.0, rel=1e-3) and abs(h0[:, q].mean()) < 1e-6
    assert np.array_equal(model.params["W_proj"][:, 5:], untouched)
    bs.init_forget_gate_bias(model, 2.0)
    assert np.all(model.params["b"][8:16] == 2.0) and np.all(model.params["b"][:8] == 0.0)


def test_warmup_cosine_schedule():
    factors = [bs.warmup_cosine(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.001


def test_saliency_ratio():
    saliency = np.ones((2, 4, 4))
    inside = np.zeros((2, 4, 4), dtype=bool)
    inside[:, :2, :2] = True
    saliency[inside] = 3.0
    assert bs.saliency_ratio(saliency, inside) == pytest.approx(3.0)


def test_best_constant_caption_is_the_argmax_of_nltk_corpus_bleu():
    scenes = list(shapes.iter_scenes(7, 60, bs.SCENE_SIZE))
    references = [[c.split() for c in s.captions] for s in scenes[:40]]
    candidates = sorted({c for s in scenes[40:] for c in s.captions})
    tokens, score = bs.best_constant_caption(references, [c.split() for c in candidates])
    brute = {c: corpus_bleu_scores(references, [c.split()] * len(references))["bleu4"] for c in candidates}
    best = max(brute.values())
    assert score == pytest.approx(best, abs=1e-12)
    assert brute[" ".join(tokens)] == pytest.approx(best, abs=1e-12)
    assert best > 0.05  # a real search: the best constant shares 4-grams with the references


def test_a_model_below_its_gate_is_not_published(tmp_path):
    torch.manual_seed(0)
    plan = bs.Plan(
        "tiny",
        bs.ClassifierRecipe(epochs=1, scenes_per_epoch=64, batch_size=32, bfloat16="off"),
        bs.QUICK.captioner,
        bs.Gates(min_accuracy=1.01),
        held_out_scenes=32,
        saliency_scenes=4,
    )
    registry = Registry(tmp_path / "registry")
    runner = bs.Bootstrap(registry, plan)
    events = []
    with pytest.raises(bs.GateFailed) as info:
        for event in runner.run():
            events.append(event)
    assert "not published" in info.value.message and "held-out accuracy" in info.value.message
    assert registry.names() == []
    assert any(e.stage == "gate" and "FAIL" in e.message for e in events)
    assert not runner.report.passed


def test_unknown_plan_name():
    with pytest.raises(InvalidInput):
        bs.bootstrap(Registry("/nonexistent"), "huge")


# ---------------------------------------------------------------------------------------------------
# The quick bootstrap


def test_quick_bootstrap_publishes_both_models_with_their_records(quick_bootstrap):
    registry, report = quick_bootstrap.registry, quick_bootstrap.report
    assert set(report.published) == {bs.CLASSIFIER_NAME, bs.CAPTIONER_NAME}
    assert report.skipped == {}
    classifier = registry.resolve(bs.CLASSIFIER_NAME)
    captioner = registry.resolve(bs.CAPTIONER_NAME)
    assert set(classifier.tasks) == {"classification", "feature-extraction"}
    assert classifier.metadata["num_classes"] == len(shapes.CLASS_NAMES)
    assert classifier.metadata["class_names"] == list(shapes.CLASS_NAMES)
    assert classifier.metadata["input_size"] == bs.QUICK.classifier.input_size
    training = classifier.metadata["training"]
    assert training["seed"] == bs.QUICK.seed and training["plan"] == "quick"
    assert training["data"]["generator_version"] == shapes.GENERATOR_VERSION
    assert training["data"]["scenes_seen"] == (
        bs.QUICK.classifier.total_steps * bs.QUICK.classifier.batch_size
    )
    held_out = classifier.metadata["metrics"]["held_out"]
    assert held_out["accuracy"] == pytest.approx(report.classifier.accuracy)
    # the captioner pins exactly this encoder and records its own held-out numbers
    assert captioner.tasks == ("captioning",)
    assert captioner.metadata["encoder"] == {
        "name": classifier.name,
        "version": classifier.version,
        "sha256": classifier.sha256,
    }
    assert captioner.metadata["cell_type"] == "lstm" and captioner.metadata["input_dim"] == 512
    assert captioner.metadata["training"]["data"]["train_images"] == bs.QUICK.captioner.train_scenes
    assert captioner.metadata["metrics"]["held_out"]["constant_caption"] == report.captioner.constant_caption
    assert "loss_curve.png" in {f.name for f in captioner.files}
    for manifest in (classifier, captioner):
        registry.verify(manifest)
        assert all(g["passed"] for g in manifest.metadata["gates"])


def test_quick_gates_beat_every_baseline(quick_bootstrap):
    report = quick_bootstrap.report
    by_metric = {c.metric: c for c in report.checks}
    explain = "explained words' saliency on the named object/outside objects"
    assert set(by_metric) == {"held-out accuracy", "saliency inside/outside objects", "held-out BLEU-4", explain}
    for check in report.checks:
        assert check.passed, check.line()
        assert check.value > check.baseline, check.line()
    accuracy = by_metric["held-out accuracy"]
    assert accuracy.value >= 2 * accuracy.baseline
    assert 0.0 < accuracy.baseline < 0.15  # 18 balanced classes
    bleu = by_metric["held-out BLEU-4"]
    # the reported constant-caption baseline is the real corpus BLEU-4 of that caption
    assert bleu.baseline == pytest.approx(report.captioner.constant_bleu["bleu4"])
    assert report.captioner.held_out_images == bs.QUICK.captioner.held_out_scenes
    assert report.classifier.saliency_ratio >= bs.QUICK.gates.min_saliency_ratio
    assert by_metric[explain].value == report.captioner.explain_saliency["ratio"] >= bs.QUICK.gates.min_explain_ratio


def test_quick_bootstrap_reports_progress_in_order(quick_bootstrap):
    events = quick_bootstrap.events
    stages = [e.stage for e in events]
    order = [
        "classifier",
        "classifier-eval",
        "gate",
        "publish",
        "captioning-data",
        "features",
        "captioner",
        "captioner-eval",
    ]
    firsts = [stages.index(s) for s in order]
    assert firsts == sorted(firsts)
    steps = [e.done for e in events if e.stage == "classifier"]
    assert steps == list(range(1, bs.QUICK.classifier.total_steps + 1))
    assert all(math.isfinite(e.loss) for e in events if e.stage == "classifier")


def test_bootstrap_keeps_present_models_unless_forced(quick_bootstrap):
    registry = quick_bootstrap.registry
    before = {m.ref for m in registry.list(all_versions=True)}
    runner = bs.Bootstrap(registry, bs.QUICK)
    events = list(runner.run())
    assert set(runner.report.skipped) == {bs.CLASSIFIER_NAME, bs.CAPTIONER_NAME}
    assert runner.report.published == {}
    assert [e.stage for e in events] == ["skip", "skip"]
    assert {m.ref for m in registry.list(all_versions=True)} == before


def test_cli_bootstrap_skips_present_models_and_prints_json(quick_bootstrap, capsys):
    from pixelrpc.cli import main

    code = main(
        ["models", "bootstrap", "--quick", "--registry", str(quick_bootstrap.registry.root), "--json"]
    )
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert set(data["skipped"]) == {bs.CLASSIFIER_NAME, bs.CAPTIONER_NAME}
    assert data["plan"] == "quick" and data["published"] == {}


def test_the_published_classifier_scores_as_evaluated(quick_bootstrap):
    """Loaded back from the registry, the classifier reproduces its recorded held-out accuracy."""
    registry = quick_bootstrap.registry
    manifest = registry.resolve(bs.CLASSIFIER_NAME)
    model = load_model(registry, manifest, "cpu")
    held_out = bs.held_out_batch(bs.QUICK.seed, bs.QUICK.held_out_scenes)
    predicted = bs.predict(model, bs.model_inputs(model, held_out.images))
    assert float((predicted == held_out.labels).mean()) == pytest.approx(
        manifest.metadata["metrics"]["held_out"]["accuracy"]
    )


# ---------------------------------------------------------------------------------------------------
# The three services on the bootstrapped registry


def test_all_three_services_load_and_answer_with_the_quick_models(quick_bootstrap):
    from pixelrpc.clients.captioning import CaptioningClient
    from pixelrpc.clients.style import StyleClient
    from pixelrpc.clients.visualization import VisualizationClient
    from pixelrpc.services.testing import running_server

    registry = quick_bootstrap.registry
    classifier = registry.resolve(bs.CLASSIFIER_NAME)
    captioner = registry.resolve(bs.CAPTIONER_NAME)
    scene = held_out_scene(0)
    image = png_bytes(scene.image)
    with running_server(("captioning", "visualization", "style"), registry=registry) as server:
        with CaptioningClient(server.address, timeout=60) as c:
            out = c.caption(image)  # no model named: the service's default is shapes-captioner
            assert out.meta.model_name == bs.CAPTIONER_NAME and out.meta.model_sha256 == captioner.sha256
            assert out.encoder == classifier.ref
            words = out.text.split()
            assert words and set(words) <= set(shapes.VOCAB["word_to_idx"])
        with VisualizationClient(server.address, timeout=60) as v:
            response = v.classify([image], model=bs.CLASSIFIER_NAME, top_k=3)
            assert response.meta.model_sha256 == classifier.sha256
            top = response.results[0].predictions
            assert len(top) == 3 and top[0].label in shapes.CLASS_NAMES
            saliency = v.saliency(image, target_class=scene.label, model=bs.CLASSIFIER_NAME)
            assert saliency.target_label == scene.label_name
            assert saliency.input_size == classifier.metadata["input_size"]
        with StyleClient(server.address, timeout=120) as s:
            texture = held_out_scene(1).image
            result = s.stylize_unary(
                image,
                [png_bytes(texture)],
                model=bs.CLASSIFIER_NAME,
                image_size=48,
                style_size=48,
                iterations=3,
                decay_at=2,
            )
            assert result.meta.model_name == bs.CLASSIFIER_NAME
            assert result.image.size[0] >= 48 and math.isfinite(result.losses.total)


def test_the_coco_layout_commands_train_a_captioner_on_the_shapes_world(quick_bootstrap, tmp_path, capsys):
    """``data shapes`` -> ``features extract`` -> ``train captioner``: the commands that serve real COCO."""
    import shutil

    from pixelrpc.cli import main

    registry_root = tmp_path / "registry"
    shutil.copytree(quick_bootstrap.registry.root, registry_root)  # training publishes into it
    data = tmp_path / "shapes"
    assert main(["data", "shapes", str(data), "--train", "40", "--val", "12", "--seed", "3", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["n_train"] == 40 and written["n_val"] == 12 and written["n_train_captions"] >= 120
    assert main(["data", "shapes", str(data), "--train", "2"]) == 1  # never overwrites a data set
    assert "already exists" in capsys.readouterr().err

    for split in ("train2014", "val2014"):
        code = main(["features", "extract", "--encoder", bs.CLASSIFIER_NAME, "--images", str(data / split),
                     "--out", str(data / f"{split}_vgg16_fc7.h5"), "--registry", str(registry_root), "--json"])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["train", "captioner", "--data", str(data), "--cell", "lstm", "--hidden", "16", "--wordvec", "8",
                 "--epochs", "1", "--batch-size", "20", "--val-images", "12", "--publish", "tiny-shapes-captioner",
                 "--run-dir", str(tmp_path / "run"), "--registry", str(registry_root), "--json"])
    assert code == 0, capsys.readouterr().err
    manifest = Registry(registry_root).resolve("tiny-shapes-captioner")
    encoder = quick_bootstrap.registry.resolve(bs.CLASSIFIER_NAME)
    assert manifest.metadata["encoder"]["sha256"] == encoder.sha256
