"""The bootstrap itself: train, gate and publish the two default models into a registry.

``Bootstrap(registry, plan).run()`` is a generator of ``BootstrapEvent`` (one per training step and
stage), so a CLI can draw progress bars and a cancel token can stop it between steps; ``report``
holds the outcome. ``bootstrap()`` runs it whole.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixelrpc.models.bootstrap.captioner import (
    CaptionerReport,
    evaluate_captioner_against_constant,
    feature_statistics,
    fold_standardisation,
    init_forget_gate_bias,
    init_projection_from_probe,
    largest_two_classes,
    preferred_captions,
    scene_description,
    standardise_features,
)
from pixelrpc.models.bootstrap.classifier import (
    DENSE_TAPS,
    ClassifierReport,
    ShapesClassifierTraining,
    evaluate_classifier,
    held_out_batch,
    image_model,
    model_inputs,
)
from pixelrpc.models.bootstrap.gates import GateCheck, GateFailed, captioner_gates, classifier_gates
from pixelrpc.models.bootstrap.golden import GOLDEN_CANDIDATES, captioner_golden, classifier_golden
from pixelrpc.models.bootstrap.plan import (
    CAPTIONER_NAME,
    CLASSIFIER_NAME,
    CLASSIFIER_TASKS,
    FULL,
    PLANS,
    SCENE_SIZE,
    Plan,
    seed_stream,
)
from pixelrpc.models.data import shapes
from pixelrpc.models.errors import FailedPrecondition, InvalidInput
from pixelrpc.models.registry import load_model, run_golden


def manifest_metadata(description: str, plan: Plan, recipe, *, data: dict, training: dict, report,
                      checks: list) -> dict:
    """A bootstrapped model's manifest metadata: how it was trained, on what, and its held-out record."""
    return {
        "description": description,
        "training": {
            "plan": plan.name,
            "seed": plan.seed,
            "recipe": recipe.to_json(),
            "data": {"generator": shapes.__name__, "generator_version": shapes.GENERATOR_VERSION, **data},
            **training,
        },
        "metrics": {"held_out": report.to_json()},
        "gates": [c.to_json() for c in checks],
    }


@dataclass(frozen=True)
class BootstrapEvent:
    """Progress of a bootstrap: ``done`` of ``total`` units of ``stage``, or a one-line ``message``."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    loss: float | None = None


@dataclass
class BootstrapReport:
    """What a bootstrap did: published or skipped models, every gate, the time of each stage."""

    plan: str
    published: dict[str, str] = field(default_factory=dict)  # name -> "name:version"
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why
    checks: list[GateCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    classifier: ClassifierReport | None = None
    captioner: CaptionerReport | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {
            "plan": self.plan,
            "published": self.published,
            "skipped": self.skipped,
            "checks": [c.to_json() for c in self.checks],
            "seconds": self.seconds,
            "classifier": self.classifier.to_json() if self.classifier else None,
            "captioner": self.captioner.to_json() if self.captioner else None,
        }



class Bootstrap:
    """Train, gate and publish the default models into ``registry``.

    ``run()`` is a generator of ``BootstrapEvent``; ``report`` holds the outcome. A model already
    in the registry is kept unless ``force``; the captioner is also retrained when the classifier
    it pins is retrained or gone. ``work_dir`` keeps the captioning data set (default: a temporary
    folder, removed at the end).
    """

    def __init__(
        self, registry, plan: Plan = FULL, *, force: bool = False, work_dir: str | Path | None = None
    ):
        self.registry, self.plan, self.force = registry, plan, bool(force)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.report = BootstrapReport(plan.name)

    # ----------------------------------------------------------------- what to do
    def _present(self, name: str):
        versions = self.registry.versions(name)
        return self.registry.resolve(name) if versions else None

    def _captioner_current(self, classifier_manifest) -> bool:
        captioner = self._present(CAPTIONER_NAME)
        if captioner is None:
            return False
        pin = captioner.metadata.get("encoder") or {}
        return pin.get("sha256") == classifier_manifest.sha256

    # ----------------------------------------------------------------- running
    def run(self, check: Callable[[], None] | None = None) -> Iterator[BootstrapEvent]:
        started = time.perf_counter()
        classifier = None if self.force else self._present(CLASSIFIER_NAME)
        if classifier is None:
            classifier = yield from self._classifier(check)
        else:
            self.report.skipped[CLASSIFIER_NAME] = (
                f"{classifier.ref} already in the registry (use --force to retrain)"
            )
            yield BootstrapEvent("skip", message=f"{CLASSIFIER_NAME}: {self.report.skipped[CLASSIFIER_NAME]}")
        if self.force or not self._captioner_current(classifier):
            yield from self._captioner(classifier, check)
        else:
            ref = self._present(CAPTIONER_NAME).ref
            self.report.skipped[CAPTIONER_NAME] = f"{ref} already in the registry (use --force to retrain)"
            yield BootstrapEvent("skip", message=f"{CAPTIONER_NAME}: {self.report.skipped[CAPTIONER_NAME]}")
        self.report.seconds["total"] = round(time.perf_counter() - started, 2)

    def _gate(self, checks: list[GateCheck]) -> Iterator[BootstrapEvent]:
        self.report.checks.extend(checks)
        for c in checks:
            yield BootstrapEvent("gate", message=f"{c.model}: {c.line()}")
        for c in checks:
            if not c.passed:
                raise GateFailed(c)

    def _classifier(self, check):
        from pixelrpc.models.zoo import publish_squeezenet

        plan, recipe = self.plan, self.plan.classifier
        t0 = time.perf_counter()
        training = ShapesClassifierTraining(recipe, plan.seed)
        for step in training.steps(check):
            yield BootstrapEvent("classifier", step.step, step.total, loss=step.loss)
        self.report.seconds["classifier_training"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        yield BootstrapEvent("classifier-eval", message=f"scoring {plan.held_out_scenes} held-out scenes")
        model = image_model(training.net, recipe)
        report = evaluate_classifier(
            model,
            held_out_batch(plan.seed, plan.held_out_scenes),
            training.label_counts,
            saliency_scenes=plan.saliency_scenes,
        )
        self.report.classifier = report
        self.report.seconds["classifier_evaluation"] = round(time.perf_counter() - t0, 2)
        checks = classifier_gates(report, plan.gates)
        yield from self._gate(checks)

        import torch

        metadata = manifest_metadata(
            "SqueezeNet 1.1 trained from scratch on the generated shapes world "
            "(label: shape and colour of the largest object)",
            plan,
            recipe,
            data={
                "scene_size": SCENE_SIZE,
                "fresh_scenes_per_epoch": recipe.scenes_per_epoch,
                "scenes_seen": training.scenes_seen,
                "seed_streams": "SeedSequence([seed, 1, epoch]) per epoch; held-out SeedSequence([seed, 2])",
            },
            training={
                "auxiliary_heads": {"dense_coverage_taps": sorted(DENSE_TAPS), "slots": shapes.MAX_OBJECTS},
                "final_loss": float(np.mean(training.history[-20:])),
                "seconds": round(training.seconds, 2),
                "torch_threads": torch.get_num_threads(),
            },
            report=report,
            checks=checks,
        )
        golden = classifier_golden(model, held_out_batch(plan.seed, GOLDEN_CANDIDATES).images)
        manifest = publish_squeezenet(
            self.registry,
            CLASSIFIER_NAME,
            training.net,
            class_names=shapes.CLASS_NAMES,
            tasks=CLASSIFIER_TASKS,
            input_size=recipe.input_size,
            mean=recipe.mean,
            std=recipe.std,
            value_scale=1.0,
            metadata=metadata,
            extra_files=golden,
        )
        self._check_round_trip(manifest, model, held_out_batch(plan.seed, 8).images)
        self.report.published[CLASSIFIER_NAME] = manifest.ref
        yield BootstrapEvent("publish", message=f"published {manifest.ref} (sha256 {manifest.sha256[:12]})")
        return manifest

    def _check_round_trip(self, manifest, model, images: np.ndarray) -> None:
        """The published model, loaded back as a service loads it, must give the same scores."""
        import torch

        loaded = load_model(self.registry, manifest, "cpu")
        x = model_inputs(model, images)
        with torch.inference_mode():
            if not torch.allclose(model(x), loaded(x), rtol=1e-4, atol=1e-4):
                raise FailedPrecondition(
                    f"{manifest.ref} does not reproduce the trained network's scores "
                    "after loading it back from the registry"
                )
        self._check_golden(manifest, loaded)

    def _check_golden(self, manifest, loaded) -> None:
        """The published model, loaded back, must pass the golden examples it was published with."""
        report = run_golden(manifest, loaded, lambda f: self.registry.read_file(manifest, f))
        if report.state != "passed":
            raise FailedPrecondition(f"{report.line()} right after publishing it")

    def _captioner(self, classifier, check):
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            data_dir = self.work_dir / "shapes-captions"
            if data_dir.exists():
                shutil.rmtree(data_dir)
            yield from self._captioner_in(classifier, data_dir, check)
        else:
            with tempfile.TemporaryDirectory(prefix="pixelrpc-bootstrap-") as tmp:
                yield from self._captioner_in(classifier, Path(tmp) / "shapes-captions", check)

    def _captioner_in(self, classifier, data_dir: Path, check):
        from pixelrpc.models.captioning.captioning_rnn import save_to_registry
        from pixelrpc.models.captioning.data import CocoCaptioningData
        from pixelrpc.models.captioning.training import loss_curve_png

        plan, recipe = self.plan, self.plan.captioner
        dataset, data_seed = yield from self._caption_data(data_dir)
        yield from self._features(classifier, data_dir, check)
        mean, std = feature_statistics(data_dir / "train_features.h5")
        for split in ("train", "val"):
            standardise_features(
                data_dir / f"{split}_features.h5", data_dir / f"{split}_features_std.h5", mean, std
            )

        t0 = time.perf_counter()
        training, all_train, keep = yield from self._train_captioner(classifier, data_dir, check)
        fold_standardisation(training.model, mean, std)  # now it reads the encoder's raw features
        self.report.seconds["captioner_training"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        yield BootstrapEvent("captioner-eval", message=f"scoring {recipe.held_out_scenes} held-out scenes")
        with CocoCaptioningData.open(
            data_dir, train_features="train_features.h5", val_features="val_features.h5"
        ) as raw:
            report = evaluate_captioner_against_constant(training.model, raw, all_train)
            val_features = raw.split("val").features
            golden_rows = np.arange(min(GOLDEN_CANDIDATES, val_features.num_images))
            golden = captioner_golden(training.model, val_features.read(golden_rows), self.plan.seed)
        from pixelrpc.models.captioning.explain_gate import explain_gate

        explained = explain_gate(training.model, load_model(self.registry, classifier, "cpu"),
                                 held_out_batch(plan.seed, plan.explain_scenes))
        report = dataclasses.replace(report, explain_saliency=explained.to_json())
        self.report.captioner = report
        self.report.seconds["captioner_evaluation"] = round(time.perf_counter() - t0, 2)
        checks = captioner_gates(report, plan.gates)
        yield from self._gate(checks)
        metadata = manifest_metadata(
            "LSTM captioner of the generated shapes world, on shapes-squeezenet's pooled features",
            plan,
            recipe,
            data={
                "layout": "CS231n COCO captioning (write_coco_layout)",
                "seed": data_seed,
                "train_images": dataset.n_train,
                "train_captions": dataset.n_train_captions,
                "captions_learned": int(keep.sum()),
                "caption_selection": "per image, its best references by: largest object named first, "
                "not the 'a B with a A ... it' wording, second largest named "
                "next, 'there is' wording (preferred_captions)",
                "held_out_images": dataset.n_val,
                "held_out_captions": dataset.n_val_captions,
            },
            training={
                "feature_standardisation": "trained on (features - mean) / std of the training features, "
                "then folded into W_proj and b_proj: the model reads raw encoder features",
                "solver": training.training_metadata()["config"],
                "validation_history": training.validation,
                "final_loss": training.metrics()["final_train_loss"],
                "seconds": round(training.seconds, 2),
            },
            report=report,
            checks=checks,
        )
        curve = loss_curve_png(
            training.loss_history,
            validation=training.validation,
            title=f"{CAPTIONER_NAME} ({recipe.training.cell_type})",
        )
        manifest = save_to_registry(
            training.model,
            self.registry,
            CAPTIONER_NAME,
            encoder=classifier,
            metadata=metadata,
            extra_files={"loss_curve.png": curve, **golden},
        )
        self._check_golden(manifest, load_model(self.registry, manifest, "cpu"))
        self.report.published[CAPTIONER_NAME] = manifest.ref
        yield BootstrapEvent("publish", message=f"published {manifest.ref} (encoder {classifier.ref})")
        return manifest

    def _caption_data(self, data_dir: Path):
        """Write the captioning data set (COCO layout) of the plan; returns (ShapesDataset, its seed)."""
        recipe = self.plan.captioner
        data_seed = int(seed_stream(self.plan.seed, "captioner-data").generate_state(1)[0])
        t0 = time.perf_counter()
        total = recipe.train_scenes + recipe.held_out_scenes
        yield BootstrapEvent("captioning-data", 0, total, message=f"writing {total} scenes")
        dataset = shapes.write_coco_layout(
            data_dir, recipe.train_scenes, recipe.held_out_scenes, seed=data_seed, size=SCENE_SIZE
        )
        yield BootstrapEvent("captioning-data", total, total)
        self.report.seconds["captioning_data"] = round(time.perf_counter() - t0, 2)
        return dataset, data_seed

    def _features(self, classifier, data_dir: Path, check):
        """``train_features.h5`` and ``val_features.h5``: the encoder's pooled features of every image."""
        from pixelrpc.models.captioning.features import extract_features

        recipe = self.plan.captioner
        t0 = time.perf_counter()
        encoder = load_model(self.registry, classifier, "cpu")
        pin = {"name": classifier.name, "version": classifier.version, "sha256": classifier.sha256}
        total, offset = recipe.train_scenes + recipe.held_out_scenes, 0
        for split, n in (("train", recipe.train_scenes), ("val", recipe.held_out_scenes)):
            for count in extract_features(
                encoder,
                data_dir / f"{split}2014",
                data_dir / f"{split}_features.h5",
                encoder_pin=pin,
                batch_size=256,
                check=check,
            ):
                yield BootstrapEvent("features", offset + count, total)
            offset += n
        self.report.seconds["features"] = round(time.perf_counter() - t0, 2)

    def _train_captioner(self, classifier, data_dir: Path, check):
        """Train on the standardised features and the preferred captions; returns (training, every
        training caption, which of them were learned)."""
        from pixelrpc.models.captioning.data import CaptionSplit, CocoCaptioningData
        from pixelrpc.models.captioning.training import CaptionerTraining

        recipe = self.plan.captioner
        config = recipe.solver_config(self.plan.seed)
        with CocoCaptioningData.open(
            data_dir, train_features="train_features_std.h5", val_features="val_features_std.h5"
        ) as data:
            train = data.split("train")
            with np.load(data_dir / shapes.masks_filename("train"), allow_pickle=False) as masks:
                annotations = {k: masks[k] for k in ("num_objects", "shapes", "colours", "sizes", "centres")}
            classes = (
                annotations["shapes"].astype(np.int64) * len(shapes.COLOUR_NAMES) + annotations["colours"]
            )
            largest_two = largest_two_classes(annotations["num_objects"], classes)
            keep = preferred_captions(train.captions, train.image_idxs, largest_two, data.idx_to_word)
            data.splits["train"] = CaptionSplit(
                "train", train.captions[keep], train.image_idxs[keep], train.features
            )
            training = CaptionerTraining(data, config, encoder=classifier)
            image_features = train.features.read(
                np.arange(train.features.num_images)
            )  # (Nimg, D) standardised
            description = scene_description(**annotations, side=SCENE_SIZE)  # (Nimg, Q)
            init_projection_from_probe(training.model, image_features, description, seed=self.plan.seed)
            init_forget_gate_bias(training.model, recipe.forget_bias)
            for p in training.run(check):
                message = f"epoch {p.epoch}: val BLEU-4 {p.validation['bleu4']:.3f}" if p.validation else ""
                yield BootstrapEvent(
                    "captioner", p.iteration, p.total_iterations, message=message, loss=p.loss
                )
        return training, train.captions, keep


def bootstrap(
    registry,
    plan: Plan | str = FULL,
    *,
    force: bool = False,
    on_event: Callable[[BootstrapEvent], None] | None = None,
) -> BootstrapReport:
    """Run a whole bootstrap (see ``Bootstrap``) and return its report; raises ``GateFailed``."""
    if isinstance(plan, str):
        if plan not in PLANS:
            raise InvalidInput(
                f"unknown bootstrap plan {plan!r}; use one of {', '.join(PLANS)}", field="plan"
            )
        plan = PLANS[plan]
    runner = Bootstrap(registry, plan, force=force)
    for event in runner.run():
        if on_event is not None:
            on_event(event)
    return runner.report
