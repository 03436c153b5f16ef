"""Golden examples published with the default models: a few held-out inputs and the outputs the
trained model gives them, checked by the services before they serve the model (``run_golden``)."""

from __future__ import annotations

import numpy as np

from pixelrpc.models.bootstrap.classifier import model_inputs
from pixelrpc.models.bootstrap.plan import seed_stream
from pixelrpc.models.registry import golden_files

GOLDEN_EXAMPLES = 4  # examples per model
GOLDEN_CANDIDATES = 32  # held-out inputs they are picked from
# Loose enough for CPU/GPU and thread-count rounding, tight enough to catch wrong weights or
# preprocessing; the top-1 class and the greedy tokens must match exactly, so examples are picked
# where they are clear-cut.
GOLDEN_PROBABILITY_TOLERANCE = 0.02
GOLDEN_LOGPROB_TOLERANCE = 1e-3
GOLDEN_MIN_MARGIN = 0.2


def classifier_golden(model, images: np.ndarray, count: int = GOLDEN_EXAMPLES) -> dict[str, bytes]:
    """Golden files of the classifier: ``count`` held-out scenes uint8 (N, H, W, 3) as PNGs, with the
    top-1 class and probabilities the model gives them. Scenes whose top-1 leads the runner-up by at
    least GOLDEN_MIN_MARGIN come first, so rounding on another device cannot flip the top-1."""
    import torch
    from PIL import Image

    from pixelrpc.models.imaging import encode_png

    with torch.inference_mode():
        probs = model(model_inputs(model, images)).float().softmax(dim=1).cpu().numpy()  # (N, K)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # (N,)
    clear = [i for i in range(len(images)) if margin[i] >= GOLDEN_MIN_MARGIN]
    rest = [i for i in np.argsort(-margin).tolist() if i not in clear]
    picked = (clear + rest)[:count]
    files, examples = {}, []
    for n, i in enumerate(picked):
        fname = f"golden-{n}.png"
        files[fname] = encode_png(Image.fromarray(images[i]))
        examples.append({"name": f"held-out scene {i}", "kind": "classification", "inputs": {"image": fname},
                         "tolerance": {"probabilities": GOLDEN_PROBABILITY_TOLERANCE}})
    return golden_files(model, examples, files)


def captioner_golden(model, features: np.ndarray, seed: int, count: int = GOLDEN_EXAMPLES) -> dict[str, bytes]:
    """Golden file of the captioner: ``count`` held-out feature vectors (N, F) with their greedy tokens.
    Vectors whose greedy caption survives a small perturbation (relative 1e-3) come first, so rounding
    elsewhere cannot change a token."""
    from pixelrpc.models.captioning.decoding import greedy

    rng = np.random.default_rng(seed_stream(seed, "captioner-data", 99))
    stable, rest = [], []
    for i, f in enumerate(np.asarray(features, dtype=np.float64)):
        tokens = greedy(model, f).tokens
        nudged = f * (1.0 + 1e-3 * rng.standard_normal(f.shape))
        (stable if greedy(model, nudged).tokens == tokens else rest).append(i)
    examples = [
        {"name": f"held-out image {i}", "kind": "captioning",
         "inputs": {"features": [float(x) for x in np.asarray(features[i], dtype=np.float64)], "max_length": 30},
         "tolerance": {"logprobs": GOLDEN_LOGPROB_TOLERANCE}}
        for i in (stable + rest)[:count]
    ]
    return golden_files(model, examples)
