"""Top-k classification of normalised image batches.

Dimensions: N images, K classes, k = ``top_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pixelrpc.models.visualization.inputs import as_image_model, check_images, positive_int, scores_of
from pixelrpc.models.zoo import ImageModel


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    probability: float  # softmax of the scores over all K classes
    score: float  # the raw class score


def class_label(model: ImageModel, index: int) -> str:
    names = model.class_names
    return names[index] if 0 <= index < len(names) else f"class {index}"


@torch.no_grad()
def class_scores(X: torch.Tensor, model: ImageModel | torch.nn.Module, *,
                 batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and probabilities of every class: ((N, K) logits, (N, K) float32 softmax).

    Inputs:
    - X: normalised images (N, 3, H, W).
    - model: an ImageModel or a bare classifier module.
    """
    model = as_image_model(model)
    X = check_images(X, model)
    batch_size = positive_int(batch_size, "batch_size")
    scores = torch.cat([scores_of(model, X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)])  # (N, K)
    return scores, scores.float().softmax(dim=1)


def classify(X: torch.Tensor, model: ImageModel | torch.nn.Module, top_k: int = 5, *,
             batch_size: int = 32) -> list[list[Prediction]]:
    """The ``top_k`` most probable classes of each image, most probable first.

    Inputs:
    - X: normalised images (N, 3, H, W).
    - model: an ImageModel (labels from its class names) or a bare classifier module.
    Returns: N lists of min(top_k, K) Predictions.
    """
    model = as_image_model(model)
    top_k = positive_int(top_k, "top_k")
    scores, probs = class_scores(X, model, batch_size=batch_size)  # (N, K) each
    top_p, top_i = probs.topk(min(top_k, probs.shape[1]), dim=1)  # (N, k)
    out = []
    for n in range(X.shape[0]):
        out.append([Prediction(int(i), class_label(model, int(i)), float(p), float(scores[n, i]))
                    for p, i in zip(top_p[n].tolist(), top_i[n].tolist(), strict=True)])
    return out
