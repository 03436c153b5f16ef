"""``make demo``: the default models, the three services as separate processes, every job through the
client library, and a gallery in ``demo-output/index.html``.

1. Bootstraps the default registry (``PIXELRPC_REGISTRY`` or ``~/.cache/pixelrpc/registry``) where
   ``shapes-squeezenet`` or ``shapes-captioner`` is missing, and imports the Caffe SqueezeNet 1.1
   trunk from ``../shared/data/cs231n/sqz_notop.mat`` when that file exists and the registry lacks it.
2. Starts captioning, visualization and style with ``launcher.start_suite`` on 127.0.0.1.
3. Captions 16 held-out scenes over one bidirectional ``CaptionStream`` (each caption printed beside
   a reference as it arrives), explains three captions word by word (``demo_explain``: a saliency
   map under each word), classifies four scenes and draws their saliency, makes a fooling
   image, runs a class visualization with previews, and stylizes a scene after a generated texture
   (the style service picks its feature network by its documented rule and says which in
   ``ResponseMeta.model_choice``). With the shared data it also stylizes ``tubingen.jpg`` after
   ``starry_night.jpg`` with the Caffe trunk.
4. Writes every picture, ``summary.json`` and ``index.html`` into ``demo-output/``, prints a summary
   table, and stops the services (SIGTERM, graceful drain).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pixelrpc.cli import demo_gallery as gallery_lib
from pixelrpc.cli.launcher import start_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "PIXELRPC_CS231N_DATA"
DEMO_SEED = 20170601  # the demo's scenes: a stream no training run draws from
CAFFE_NAME = "squeezenet1_1-caffe"


def shared_data_dir() -> Path | None:
    """``$PIXELRPC_CS231N_DATA`` or ``<repo>/../shared/data/cs231n``, if it exists."""
    for candidate in (os.environ.get(SHARED_ENV), REPO_ROOT.parent / "shared" / "data" / "cs231n"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def generated_texture(side: int = 128, seed: int = 7) -> Image.Image:
    """A colourful interference pattern of a few random plane waves, as the style image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / side
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(-9, 9, size=2)
        gx, gy = rng.uniform(-5, 5, size=2)
        wave = np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 6)) * np.cos(
            2 * np.pi * (gx * x + gy * y)
        )
        channels.append(0.5 + 0.45 * wave)
    return Image.fromarray((np.stack(channels, axis=-1) * 255).round().astype(np.uint8), mode="RGB")


def closest_reference(caption: str, references) -> str:
    """The reference sharing the most words (with multiplicity) with ``caption``."""
    from collections import Counter

    words = Counter(caption.split())
    return max(references, key=lambda r: (sum((words & Counter(r.split())).values()), -len(r)))


@dataclass
class Summary:
    """One line of the terminal table per job."""

    rows: list[tuple[str, str, str, float]] = field(default_factory=list)

    def add(self, step: str, model: str, result: str, seconds: float) -> None:
        self.rows.append((step, model, result, seconds))

    def print(self) -> None:
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
            for i, h in enumerate(("step", "model", "result"))
        ]
        line = f"  {'step':<{widths[0]}}  {'model':<{widths[1]}}  {'result':<{widths[2]}}  seconds"
        print(line)
        print("  " + "-" * (len(line) - 2))
        for step, model, result, seconds in self.rows:
            print(f"  {step:<{widths[0]}}  {model:<{widths[1]}}  {result:<{widths[2]}}  {seconds:7.1f}")


def seal_legacy(registry, names) -> None:
    """Seal the demo's own models left by an older PixelRPC (manifests without a digest).

    The services refuse unsealed manifests (FAILED_PRECONDITION, pointing at ``pixelrpc models seal``);
    the demo does that step for the registry it manages, and ``Registry.seal`` seals only a version
    whose every file still matches its sha256. A corrupt version is reported and left as it is.
    """
    from pixelrpc.models.errors import PixelRPCError

    for name in names:
        for version in registry.versions(name):
            try:
                if registry.seal(name, version):
                    print(f"  sealed {name}:{version} (manifest written by an older PixelRPC)")
            except PixelRPCError as exc:
                print(f"  {name}:{version} left unsealed: {exc.message}")


def ensure_models(registry, *, quick: bool, threads: int) -> dict:
    """Bootstrap what is missing and import the Caffe trunk if the shared data has it."""
    import torch

    from pixelrpc.cli.bootstrap import run_with_progress
    from pixelrpc.models.bootstrap import CAPTIONER_NAME, CLASSIFIER_NAME, FULL, QUICK, Bootstrap

    info = {"bootstrap": None, "caffe": None}
    seal_legacy(registry, (CLASSIFIER_NAME, CAPTIONER_NAME, CAFFE_NAME))
    missing = [n for n in (CLASSIFIER_NAME, CAPTIONER_NAME) if not registry.versions(n)]
    if missing:
        plan = QUICK if quick else FULL
        print(
            f"  bootstrapping {', '.join(missing)} ({plan.name} plan, {threads} torch threads); "
            "this is done once"
        )
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        runner = Bootstrap(registry, plan)
        try:
            run_with_progress(runner)
        finally:
            torch.set_num_threads(previous)
        for check in runner.report.checks:
            print(f"    {check.model:<18} {check.line()}")
        info["bootstrap"] = runner.report.to_json()
    shared = shared_data_dir()
    mat = shared / "sqz_notop.mat" if shared else None
    if mat is not None and mat.is_file() and not registry.versions(CAFFE_NAME):
        from pixelrpc.models.zoo import import_caffe_squeezenet

        manifest = import_caffe_squeezenet(registry, mat)
        print(f"  imported {manifest.ref} from {mat}")
        info["caffe"] = manifest.ref
    elif registry.versions(CAFFE_NAME):
        info["caffe"] = registry.resolve(CAFFE_NAME).ref
    return info


class Demo:
    """The client-side jobs; each writes its pictures into ``out`` and adds to the gallery and table."""

    def __init__(
        self, client, out: Path, registry, *, style_iterations: int = 200, vis_iterations: int = 100
    ):
        self.client, self.out, self.registry = client, out, registry
        self.style_iterations, self.vis_iterations = style_iterations, vis_iterations
        self.gallery = gallery_lib.Gallery("PixelRPC demo", f"registry {registry.root}")
        self.summary = Summary()
        self.record: dict = {}
        from pixelrpc.models.data import shapes

        self.scenes = list(shapes.iter_scenes(DEMO_SEED, 16, 64))
        for i, scene in enumerate(self.scenes):
            Image.fromarray(scene.image).save(out / f"scene_{i:02d}.png")

    def save(self, name: str, data: bytes) -> str:
        (self.out / name).write_bytes(data)
        return name

    # ----------------------------------------------------------------- captioning
    def captions(self) -> None:
        from pixelrpc.clients.errors import RpcError
        from pixelrpc.models.captioning.bleu import corpus_bleu_scores

        print("\ncaptions of 16 held-out scenes, over one bidirectional CaptionStream:")
        start = time.perf_counter()
        images = [Image.fromarray(s.image) for s in self.scenes]
        answers: dict[int, str] = {}
        model = ""
        for index, outcome in self.client.captioning.caption_many(images):
            if isinstance(outcome, RpcError):
                print(f"  scene {index:02d}: error {outcome.code.name}: {outcome.details}")
                continue
            answers[index] = outcome.text
            model = f"{outcome.meta.model_name}:{outcome.meta.model_version} (encoder {outcome.encoder})"
            print(
                f"  scene {index:02d}: {outcome.text:<64} | "
                f"ref: {closest_reference(outcome.text, self.scenes[index].captions)}"
            )
        seconds = time.perf_counter() - start
        done = sorted(answers)
        bleu = (
            corpus_bleu_scores(
                [[c.split() for c in self.scenes[i].captions] for i in done],
                [answers[i].split() for i in done],
            )
            if done
            else {"bleu4": 0.0}
        )
        section = self.gallery.section(
            "Captions",
            f"{model}: greedy captions of held-out scenes, streamed over one CaptionStream. "
            f"Corpus BLEU-4 against their references: {bleu['bleu4']:.3f}.",
        )
        table = gallery_lib.Table(["scene", "caption", "references"])
        for i in done:
            table.rows.append(
                [
                    gallery_lib.Figure(f"scene_{i:02d}.png", f"scene {i}", 96),
                    answers[i],
                    " / ".join(self.scenes[i].captions),
                ]
            )
        section.tables.append(table)
        self.record["captions"] = {
            "model": model,
            "bleu": bleu,
            "captions": {str(i): answers[i] for i in done},
        }
        self.summary.add(
            "caption 16 scenes (stream)",
            model.split(" ")[0],
            f"{len(done)}/16 captioned, BLEU-4 {bleu['bleu4']:.2f}",
            seconds,
        )

    # ----------------------------------------------------------------- visualization
    def classify_and_saliency(self, classifier: str) -> None:
        print("\nclassification and saliency of four scenes:")
        start = time.perf_counter()
        picked = self.scenes[:4]
        response = self.client.visualization.classify(
            [Image.fromarray(s.image) for s in picked], model=classifier, top_k=3
        )
        section = self.gallery.section(
            "Classification and saliency",
            f"{classifier}: top-3 classes and the vanilla saliency map of the "
            "predicted class (Simonyan et al., 2014).",
        )
        table = gallery_lib.Table(["scene", "true label", "top-3", "saliency", "overlay"])
        correct, rows = 0, []
        for i, (scene, result) in enumerate(zip(picked, response.results, strict=True)):
            top = result.predictions
            correct += int(top[0].class_index == scene.label)
            sal = self.client.visualization.saliency(Image.fromarray(scene.image), model=classifier,
                                                     render_images=True)
            heat = self.save(f"saliency_{i}_heatmap.png", sal.heatmap.data)
            overlay = self.save(f"saliency_{i}_overlay.png", sal.overlay.data)
            ranked = ", ".join(f"{p.label} {p.probability:.0%}" for p in top)
            print(f"  scene {i:02d}: {ranked:<60} (true: {scene.label_name})")
            table.rows.append(
                [
                    gallery_lib.Figure(f"scene_{i:02d}.png", f"scene {i}", 96),
                    scene.label_name,
                    ranked,
                    gallery_lib.Figure(heat, "saliency", 96),
                    gallery_lib.Figure(overlay, "overlay", 96),
                ]
            )
            rows.append(
                {"scene": i, "label": scene.label_name, "top": [(p.label, p.probability) for p in top]}
            )
        section.tables.append(table)
        self.record["classification"] = rows
        self.summary.add(
            "classify + saliency x4", classifier, f"{correct}/4 top-1 correct", time.perf_counter() - start
        )

    def fooling(self, classifier: str) -> None:
        from pixelrpc.models.data import shapes

        start = time.perf_counter()
        scene = self.scenes[0]
        target = (scene.label + 7) % len(shapes.CLASS_NAMES)
        response = self.client.visualization.fooling_image(
            Image.fromarray(scene.image),
            target,
            model=classifier,
            max_iterations=self.vis_iterations,
        )
        r = response.result
        self.save("fooling_image.png", r.image.data)
        self.save("fooling_comparison.png", r.comparison.data)
        verdict = "fooled" if r.succeeded else "not fooled"
        text = (
            f"{r.original_label} -> {r.predicted_label} (target {shapes.CLASS_NAMES[target]}) in "
            f"{r.iterations} steps; change L2 {r.l2:.3f} ({r.relative_l2:.1%} of the image), "
            f"L-inf {r.linf:.3f}; {verdict}"
        )
        print(f"\nfooling image: {text}")
        section = self.gallery.section("Fooling image", f"{classifier}: {text}.")
        section.figures.append(
            gallery_lib.Figure("fooling_comparison.png", "original | fooling image | difference x10", 480)
        )
        self.record["fooling"] = {
            "succeeded": r.succeeded,
            "iterations": r.iterations,
            "l2": r.l2,
            "relative_l2": r.relative_l2,
            "target": shapes.CLASS_NAMES[target],
        }
        self.summary.add(
            "fooling image",
            classifier,
            f"{verdict} in {r.iterations} steps, rel. L2 {r.relative_l2:.1%}",
            time.perf_counter() - start,
        )

    def class_visualization(self, classifier: str) -> None:
        from pixelrpc.models.data import shapes

        start = time.perf_counter()
        target = shapes.class_index("circle", "red")
        previews: list[str] = []

        def on_progress(p) -> None:
            if p.preview.data:
                previews.append(self.save(f"dream_preview_{p.iteration:03d}.png", p.preview.data))

        response = self.client.visualization.class_visualization(
            target,
            model=classifier,
            num_iterations=self.vis_iterations,
            show_every=max(1, self.vis_iterations // 4),
            seed=0,
            size=128,
            on_progress=on_progress,
        )
        r = response.result
        self.save("dream.png", r.image.data)
        text = f"class {r.target_label}: p = {r.target_probability:.3f} after {r.iterations} steps"
        print(f"\nclass visualization: {text} ({len(previews)} previews)")
        section = self.gallery.section(
            "Class visualization", f"{classifier}: {text}, from noise (previews along the way)."
        )
        section.figures.extend(
            gallery_lib.Figure(p, p.split("_")[-1].removesuffix(".png").lstrip("0") or "0", 128)
            for p in previews
        )
        section.figures.append(gallery_lib.Figure("dream.png", "final", 128))
        self.record["class_visualization"] = {"class": r.target_label, "probability": r.target_probability}
        self.summary.add(
            "class visualization",
            classifier,
            f"p({r.target_label}) = {r.target_probability:.2f}",
            time.perf_counter() - start,
        )

    # ----------------------------------------------------------------- style
    def stylize(
        self,
        title: str,
        step: str,
        content: Image.Image,
        style: Image.Image,
        stem: str,
        *,
        model: str = "",
        **job,
    ):
        """Run one style job through the service; returns its gallery section and the result image."""
        from pixelrpc.clients.style import StyleOutput, StyleStep

        start = time.perf_counter()
        content.save(self.out / f"{stem}_content.png")
        style.save(self.out / f"{stem}_style.png")
        result, previews = None, []
        for event in self.client.style.stylize(
            content,
            [style],
            model=model,
            preview_every=max(1, job.get("iterations", 200) // 4),
            seed=0,
            **job,
        ):
            if isinstance(event, StyleStep) and event.preview_png:
                previews.append(self.save(f"{stem}_preview_{event.iteration:03d}.png", event.preview_png))
            elif isinstance(event, StyleOutput):
                result = event
        self.save(f"{stem}.png", result.png)
        meta = result.meta
        used = f"{meta.model_name}:{meta.model_version}"
        why = meta.model_choice or "named in the request"
        text = (
            f"{used} ({why}); {result.parameters.iterations} iterations at {result.width}x{result.height}; "
            f"final loss {result.losses.total:.4g} (content {result.losses.content:.3g}, "
            f"style {result.losses.style:.3g}, tv {result.losses.tv:.3g})"
        )
        print(f"\n{title}: {text}")
        section = self.gallery.section(title, text)
        section.figures += [
            gallery_lib.Figure(f"{stem}_content.png", "content", 160),
            gallery_lib.Figure(f"{stem}_style.png", "style", 160),
        ]
        section.figures += [
            gallery_lib.Figure(p, f"step {p.rsplit('_', 1)[-1].removesuffix('.png')}", 160) for p in previews
        ]
        section.figures.append(gallery_lib.Figure(f"{stem}.png", "result", 256))
        self.record[stem] = {"model": used, "model_choice": why, "losses": vars(result.losses)}
        self.summary.add(
            step,
            used,
            f"{result.width}x{result.height}, loss {result.losses.total:.3g}",
            time.perf_counter() - start,
        )
        return section, Image.open(io.BytesIO(result.png)).convert("RGB")

    def style_scene(self) -> None:
        scene = Image.fromarray(self.scenes[5].image)
        self.stylize(
            "Style transfer: a scene after a generated texture",
            "style: scene x texture",
            scene,
            generated_texture(),
            "style_scene",
            image_size=128,
            style_size=128,
            iterations=self.style_iterations,
            decay_at=max(1, int(self.style_iterations * 0.9)),
        )

    def style_tubingen(self, shared: Path) -> None:
        content = Image.open(shared / "styles" / "tubingen.jpg").convert("RGB")
        style = Image.open(shared / "styles" / "starry_night.jpg").convert("RGB")
        section, ours = self.stylize(
            "Style transfer: Tübingen after The Starry Night (Caffe SqueezeNet 1.1 trunk)",
            "style: Tübingen x Starry Night",
            content,
            style,
            "style_tubingen",
            model=CAFFE_NAME,
            preset="starry_night",
            iterations=self.style_iterations,
            decay_at=max(1, int(self.style_iterations * 0.9)),
        )
        self.notebook_beside(section, content, style, ours)

    def notebook_beside(self, section, content: Image.Image, style: Image.Image, ours: Image.Image) -> None:
        """The CS231n notebook's loop on the same Caffe trunk with the notebook's weights, in this process,
        beside PixelRPC's result, with the style distance of both (lower: more stylised)."""
        from pixelrpc.models.registry import ModelCache
        from pixelrpc.models.style import get_preset
        from pixelrpc.models.style.notebook import notebook_style_transfer, style_distance

        start = time.perf_counter()
        model = ModelCache(self.registry).get(CAFFE_NAME).model
        preset = get_preset("starry_night")
        run = notebook_style_transfer(model, content, style, **preset.kwargs(), iterations=self.style_iterations,
                                      decay_lr_at=max(1, int(self.style_iterations * 0.9)))
        run.image.save(self.out / "style_tubingen_notebook.png")

        def distance(img: Image.Image) -> float:
            return style_distance(model, img, style, preset.style_size, preset.style_layers)

        d_nb, d_ours = distance(run.image), distance(ours)
        text = (f"style distance (mean relative Gram distance to the style at layers {preset.style_layers}): "
                f"assignment loop {d_nb:.3f} in {run.wall_s:.1f} s, PixelRPC {d_ours:.3f}")
        print(f"  {text}")
        section.text += f"; {text}"
        section.figures.append(gallery_lib.Figure("style_tubingen_notebook.png",
                                                  "assignment loop (notebook weights)", 256))
        self.record["style_tubingen"].update(style_distance=d_ours, notebook_style_distance=d_nb)
        self.summary.add("style: notebook loop, same trunk", CAFFE_NAME, f"distance {d_nb:.3f} vs {d_ours:.3f}",
                         time.perf_counter() - start)


def _models_section(demo: Demo, registry, info: dict) -> None:
    section = demo.gallery.section(
        "Models", "The registry the services read; held-out numbers from the bootstrap manifests."
    )
    table = gallery_lib.Table(["model", "tasks", "sha256", "held-out metrics"])
    for m in registry.list():
        held = (m.metadata.get("metrics") or {}).get("held_out") or {}
        if "accuracy" in held:
            metrics = (
                f"accuracy {held['accuracy']:.3f} (majority class {held['majority_accuracy']:.3f}); "
                f"saliency inside/outside objects {held['saliency_ratio']:.1f}x"
            )
        elif "bleu" in held:
            metrics = (
                f"BLEU-4 {held['bleu']['bleu4']:.3f} (best constant caption "
                f"{held['constant_bleu']['bleu4']:.3f}: '{held['constant_caption']}')"
            ) + (f"; explained words on their object {held['explain_saliency']['ratio']:.1f}x"
                 if held.get("explain_saliency") else "")
        else:
            metrics = m.metadata.get("source", "")
        table.rows.append([m.ref, ", ".join(m.tasks), m.sha256[:12], metrics])
    section.tables.append(table)
    if info.get("bootstrap"):
        boot = info["bootstrap"]
        demo.summary.add(
            "bootstrap (this run)",
            ", ".join(boot["published"].values()) or "-",
            "gates passed" if all(c["passed"] for c in boot["checks"]) else "gates FAILED",
            float(boot["seconds"].get("total", 0.0)),
        )


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pixelrpc.cli.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--registry",
        default=None,
        help="registry folder (default: $PIXELRPC_REGISTRY or ~/.cache/pixelrpc/registry)",
    )
    p.add_argument("--output", default="demo-output", help="output folder [demo-output]")
    p.add_argument("--quick", action="store_true", help="bootstrap the small --quick models if missing")
    p.add_argument(
        "--style-iterations", type=int, default=200, help="Adam steps of each style transfer [200]"
    )
    p.add_argument(
        "--vis-iterations",
        type=int,
        default=100,
        help="steps of the fooling image (at most) and of the class visualization [100]",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads for the bootstrap [min(2, CPUs)]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pixelrpc.cli.bootstrap import default_threads
    from pixelrpc.cli.demo_explain import explain_scenes
    from pixelrpc.clients.client import Client
    from pixelrpc.models.bootstrap import CLASSIFIER_NAME
    from pixelrpc.models.registry import Registry

    args = parse_args(argv)
    started = time.perf_counter()
    registry = Registry(args.registry)
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print("PixelRPC demo")
    print(f"  registry: {registry.root}")
    info = ensure_models(registry, quick=args.quick, threads=args.threads or default_threads())
    shared = shared_data_dir()
    print("  starting captioning, visualization and style as separate processes on 127.0.0.1 ...")
    codes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="pixelrpc-demo-logs-") as logs:
        suite = start_suite(registry.root, logs)
        try:
            suite.wait_healthy(timeout=180)
            for name, svc in suite.services.items():
                print(f"  {name:<14} {svc.address:<18} SERVING")
            client = Client(**{name: svc.address for name, svc in suite.services.items()}, timeout=900)
            demo = Demo(
                client,
                out,
                registry,
                style_iterations=args.style_iterations,
                vis_iterations=args.vis_iterations,
            )
            _models_section(demo, registry, info)
            demo.captions()
            explain_scenes(demo)
            demo.classify_and_saliency(CLASSIFIER_NAME)
            demo.fooling(CLASSIFIER_NAME)
            demo.class_visualization(CLASSIFIER_NAME)
            demo.style_scene()
            if (
                shared is not None
                and registry.versions(CAFFE_NAME)
                and (shared / "styles" / "tubingen.jpg").is_file()
            ):
                demo.style_tubingen(shared)
            else:
                print("\n(no ../shared/data/cs231n: skipping Tübingen after The Starry Night)")
        finally:
            codes = suite.stop()
    demo.record["service_exit_codes"] = codes
    demo.record["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(demo.record, indent=2, default=str) + "\n")
    page = gallery_lib.write(demo.gallery, out)
    print("\nsummary")
    demo.summary.print()
    clean = all(c == 0 for c in codes.values())
    print(f"\n  services stopped {'cleanly' if clean else 'with errors'}: {codes}")
    print(f"  gallery: {page.resolve()}  ({time.perf_counter() - started:.0f}s in all)")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
