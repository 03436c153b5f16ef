"""Golden examples: a model version that tests itself before it serves.

A manifest may list ``golden.json`` among its files (sha256-verified like every file). It holds
examples, each an input, the outputs the publisher's copy of the model gave, and tolerances::

    {"schema": 1, "examples": [
      {"name": "scene-0", "kind": "classification",
       "inputs": {"image": "golden-0.png"},
       "expected": {"top1": 3, "probabilities": [0.01, ...]},
       "tolerance": {"probabilities": 0.02}}]}

``kind`` picks a runner (``RUNNERS``: "module:function", imported on first use) that computes the
outputs from the loaded model; inputs may name other files of the manifest (PNG, JSON, npz: never
pickle). Integers, strings and lists of them must match exactly; numbers within ``tolerance[key]``
(absolute, default 0). The same runners write the expected outputs at publish time
(``golden_files``), so a publisher and a server can only disagree when the model's behaviour changed.

The model cache runs them after loading a version and before it may serve (``ModelCache``); a version
that fails is never swapped in and the old one keeps serving. ``pixelrpc models verify --golden`` runs
them offline.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pixelrpc.models.errors import FailedPrecondition, ModelCorrupt, PixelRPCError

GOLDEN_FILE = "golden.json"
GOLDEN_SCHEMA = 1
Reader = Callable[[str], bytes]
Runner = Callable[[object, Mapping, Reader], dict]

RUNNERS: dict[str, str | Runner] = {
    "classification": "pixelrpc.models.registry.golden:run_classification",
    "captioning": "pixelrpc.models.registry.golden:run_captioning",
}


def register_golden_runner(kind: str, target: str | Runner) -> None:
    """Add a runner (``"module:function"`` or a callable); tests use this for toy models."""
    RUNNERS[kind] = target


@dataclass(frozen=True)
class GoldenReport:
    """The outcome of a model's golden examples.

    state: ``none`` (the manifest carries none), ``passed`` or ``failed``.
    """

    ref: str
    state: str
    examples: int = 0
    failures: tuple[str, ...] = ()
    seconds: float = 0.0
    checked_at: float = field(default_factory=time.time)

    @property
    def passed(self) -> bool:
        return self.state != "failed"

    def line(self) -> str:
        if self.state == "none":
            return f"{self.ref}: no golden examples"
        if self.state == "passed":
            return f"{self.ref}: {self.examples} golden example(s) passed"
        return (f"{self.ref}: {len(self.failures)} of {self.examples} golden example(s) failed: "
                + "; ".join(self.failures[:3]) + (" ..." if len(self.failures) > 3 else ""))

    def to_json(self) -> dict:
        return {"model": self.ref, "state": self.state, "examples": self.examples,
                "failures": list(self.failures), "seconds": round(self.seconds, 3)}


class GoldenFailed(FailedPrecondition):
    """A loaded version gave other outputs than its golden examples expect: it is not served."""

    def __init__(self, report: GoldenReport):
        super().__init__(f"model {report.line()}; this version is not served (check it with "
                         f"'pixelrpc models verify --golden {report.ref}', then remove or re-publish it)")
        self.report = report


def runner_for(kind: str) -> Runner:
    target = RUNNERS.get(kind)
    if target is None:
        raise ModelCorrupt(f"golden example kind {kind!r} is unknown here (known: {', '.join(sorted(RUNNERS))})")
    if callable(target):
        return target
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def run_golden(manifest, model, read: Reader) -> GoldenReport:
    """Run the golden examples of ``manifest`` on ``model``; ``read`` returns verified files.

    Never raises for a model that misbehaves: every problem (an exception in a runner, an output out of
    tolerance, an unreadable golden file) is a failure in the report.
    """
    if not manifest.has_file(GOLDEN_FILE):
        return GoldenReport(manifest.ref, "none")
    start = time.perf_counter()
    try:
        examples = parse_golden(read(GOLDEN_FILE))
    except PixelRPCError as exc:
        return GoldenReport(manifest.ref, "failed", 0, (exc.message,), time.perf_counter() - start)
    failures = []
    for i, ex in enumerate(examples):
        label = str(ex.get("name") or f"example {i}")
        try:
            outputs = runner_for(str(ex.get("kind", "")))(model, ex.get("inputs") or {}, read)
            problems = compare(ex.get("expected") or {}, outputs, ex.get("tolerance") or {})
        except PixelRPCError as exc:
            problems = [exc.message]
        except Exception as exc:  # noqa: BLE001 - a broken model must fail its check, not crash the server
            problems = [f"{type(exc).__name__}: {exc}"]
        failures.extend(f"{label}: {p}" for p in problems)
    state = "failed" if failures else "passed"
    return GoldenReport(manifest.ref, state, len(examples), tuple(failures), time.perf_counter() - start)


def parse_golden(raw: bytes) -> list[dict]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelCorrupt(f"{GOLDEN_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != GOLDEN_SCHEMA or not isinstance(data.get("examples"), list):
        raise ModelCorrupt(f"{GOLDEN_FILE} is not a golden file of schema {GOLDEN_SCHEMA}")
    if not all(isinstance(e, dict) for e in data["examples"]):
        raise ModelCorrupt(f"{GOLDEN_FILE}: every example must be a JSON object")
    return data["examples"]


def compare(expected: Mapping, got: Mapping, tolerance: Mapping) -> list[str]:
    """What differs between ``expected`` and ``got`` (empty: they agree)."""
    problems = []
    for key, want in expected.items():
        if key not in got:
            problems.append(f"{key} missing from the outputs")
            continue
        atol = float(tolerance.get(key, 0.0))
        diff = _difference(want, got[key], atol)
        if diff:
            problems.append(f"{key} {diff}")
    return problems


def _difference(want, got, atol: float) -> str:
    if isinstance(want, list):
        if not isinstance(got, list | tuple) or len(got) != len(want):
            return f"expected {len(want)} values, got {_short(got)}"
        if all(isinstance(w, int | float) and not isinstance(w, bool) for w in want) and atol > 0:
            worst = max((abs(float(w) - float(g)) for w, g in zip(want, got, strict=True)), default=0.0)
            if not math.isfinite(worst) or worst > atol:
                return f"differs by up to {worst:.4g} (tolerance {atol:g})"
            return ""
        if list(got) != want:
            return f"expected {_short(want)}, got {_short(list(got))}"
        return ""
    if isinstance(want, float) or (isinstance(want, int) and atol > 0 and not isinstance(want, bool)):
        try:
            delta = abs(float(want) - float(got))
        except (TypeError, ValueError):
            return f"expected {want!r}, got {_short(got)}"
        if not math.isfinite(delta) or delta > atol:
            return f"expected {want!r} +- {atol:g}, got {got!r}"
        return ""
    if want != got:
        return f"expected {_short(want)}, got {_short(got)}"
    return ""


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def golden_files(model, examples: Sequence[Mapping], files: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The files to publish beside a model so it carries golden examples.

    ``examples``: dicts with ``name``, ``kind``, ``inputs`` and ``tolerance``; the expected outputs
    are computed here with the same runner the server uses. ``files``: inputs the examples name
    (e.g. PNGs). Returns ``{"golden.json": ..., **files}`` for ``Registry.publish``.
    """
    files = dict(files or {})

    def read(name: str) -> bytes:
        if name not in files:
            raise ModelCorrupt(f"golden input file {name!r} is not among the files given")
        return files[name]

    out = []
    for ex in examples:
        expected = runner_for(ex["kind"])(model, ex["inputs"], read)
        out.append({"name": ex["name"], "kind": ex["kind"], "inputs": dict(ex["inputs"]),
                    "expected": expected, "tolerance": dict(ex.get("tolerance") or {})})
    golden = json.dumps({"schema": GOLDEN_SCHEMA, "examples": out}, indent=1, sort_keys=True).encode()
    return {GOLDEN_FILE: golden, **files}


# ---------------------------------------------------------------------- runners of the default models
def run_classification(model, inputs: Mapping, read: Reader) -> dict:
    """``inputs["image"]``: a PNG file of the manifest -> ``top1`` and softmax ``probabilities``, computed
    the way the visualization service does (``ImageModel.preprocess``, then the network)."""
    import io

    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(read(str(inputs["image"]))))
    image.load()
    with torch.inference_mode():
        x = model.preprocess([image])  # (1, 3, S, S)
        probs = model(x).float().softmax(dim=1)[0].cpu()  # (K,)
    return {"top1": int(probs.argmax()), "probabilities": [round(float(p), 6) for p in probs]}


def run_captioning(model, inputs: Mapping, read: Reader) -> dict:
    """``inputs["features"]``: a feature vector (D,) -> the greedy caption's ``tokens`` and ``logprobs``."""
    import numpy as np

    from pixelrpc.models.captioning.decoding import greedy

    features = np.asarray(inputs["features"], dtype=np.float64)
    caption = greedy(model, features, max_length=int(inputs.get("max_length", 30)))
    return {"tokens": [int(t) for t in caption.tokens], "logprobs": [round(float(p), 6) for p in caption.logprobs]}
