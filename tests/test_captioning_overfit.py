"""The CS231n sanity check: a captioner overfits 50 (feature vector, caption) pairs in 100 iterations.

The assignment runs it on 50 real COCO captions; without the COCO h5 files we generate 50 captions
in the same format (V = 1004 like the real vocabulary, T + 1 = 17, ``<START> ... <END> <NULL>...``)
from a COCO-like template grammar ("a <adj> <noun> <verb> <prep> a <noun>", "a <noun> <prep> a
<noun> <verb> <prep> the <noun>", ...), each with its own random feature vector (D = 512, all
distinct). Settings are the issue's: Adam, lr 5e-3, decay 0.95 per epoch, batch 25, 100
iterations (50 epochs), wordvec 256, hidden 512.
"""

from __future__ import annotations

import numpy as np
import pytest

from pixelrpc.models.captioning.captioning_rnn import CaptioningRNN
from pixelrpc.models.captioning.data import ArrayCaptions
from pixelrpc.models.captioning.solver import CaptioningSolver

V, N, T1, D = 1004, 50, 17, 512
A, THE = 4, 5  # "a", "the"
ADJ, NOUN, VERB, PREP = np.arange(10, 40), np.arange(40, 140), np.arange(140, 170), np.arange(170, 180)


def coco_like_captions(rng: np.random.Generator) -> np.ndarray:
    """(N, 17) captions from three templates; word ids stand for COCO words by class."""
    pick = rng.choice
    templates = [
        lambda: [A, pick(ADJ), pick(NOUN), pick(VERB), pick(PREP), A, pick(NOUN)],
        lambda: [A, pick(NOUN), pick(VERB), pick(PREP), THE, pick(ADJ), pick(NOUN)],
        lambda: [A, pick(NOUN), pick(PREP), A, pick(NOUN), pick(VERB), pick(PREP), THE, pick(NOUN)],
    ]
    captions = np.zeros((N, T1), dtype=np.int32)  # <NULL> = 0
    for n in range(N):
        words = templates[rng.integers(len(templates))]()
        captions[n, 0] = 1  # <START>
        captions[n, 1: len(words) + 1] = words
        captions[n, len(words) + 1] = 2  # <END>
    return captions


@pytest.mark.parametrize(("cell_type", "threshold"), [("rnn", 0.1), ("lstm", 0.5)])
def test_overfits_fifty_captions(cell_type, threshold):
    rng = np.random.default_rng(0)
    captions = coco_like_captions(rng)
    features = rng.standard_normal((N, D)).astype(np.float32)
    assert len({f.tobytes() for f in features}) == N
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3} | {f"w{i}": i for i in range(4, V)}
    model = CaptioningRNN(vocab, input_dim=D, wordvec_dim=256, hidden_dim=512, cell_type=cell_type, seed=231)
    solver = CaptioningSolver(model, ArrayCaptions(captions, features), update_rule="adam", learning_rate=5e-3,
                              lr_decay=0.95, batch_size=25, num_epochs=50, seed=231)
    history = solver.train()
    assert len(history) == 100
    assert history[0] > 50.0  # ~ (words per caption) * ln V at the start
    assert history[-1] < threshold, f"{cell_type}: final loss {history[-1]:.3f} (history {history[::10]})"
