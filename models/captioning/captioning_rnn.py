"""An image captioning RNN/LSTM in numpy (CS231n 2017 assignment 3), and its registry format.

The model of Karpathy & Fei-Fei, "Deep visual-semantic alignments for generating image
descriptions" (CVPR 2015) and Vinyals et al., "Show and tell" (CVPR 2015): an image feature vector
is projected to the initial hidden state, and a recurrent network predicts the next word.

Dimension letters:

- N: minibatch size
- T: caption length fed to the network (captions have T + 1 tokens)
- D: image feature dimension (``input_dim``)
- W: word vector dimension (``wordvec_dim``)
- H: hidden state size (``hidden_dim``)
- V: vocabulary size
"""

from __future__ import annotations

import numpy as np

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.errors import InvalidInput, ModelCorrupt

CELL_TYPES = ("rnn", "lstm")
ARCHITECTURE = "captioning-rnn"
PARAMS_FILE = "params.safetensors"
NULL, START, END = "<NULL>", "<START>", "<END>"


class CaptioningRNN:
    """Image features -> h0 -> recurrent network -> vocabulary scores at every step.

    Parameters (in ``self.params``, all of ``dtype``): ``W_proj`` (D, H), ``b_proj`` (H,),
    ``W_embed`` (V, W), ``Wx`` (W, H) or (W, 4H) for the LSTM, ``Wh`` (H, H) or (H, 4H),
    ``b`` (H,) or (4H,), ``W_vocab`` (H, V), ``b_vocab`` (V,).
    """

    def __init__(self, word_to_idx: dict[str, int], input_dim: int = 512, wordvec_dim: int = 128,
                 hidden_dim: int = 128, cell_type: str = "rnn", dtype=np.float32, *,
                 seed: int | None = None):
        """Inputs:
        - word_to_idx: vocabulary, V entries mapping each word to a distinct index in [0, V).
          ``<NULL>`` (padding), ``<START>`` and ``<END>`` are looked up here; ``<NULL>`` is needed to
          compute the loss, ``<START>``/``<END>`` only to decode.
        - input_dim: D; wordvec_dim: W; hidden_dim: H.
        - cell_type: ``"rnn"`` or ``"lstm"``.
        - dtype: dtype of the parameters and of the computation (float64 for gradient checks).
        - seed: seeds the weight initialisation (None: fresh entropy).
        """
        if cell_type not in CELL_TYPES:
            raise ValueError(f"invalid cell_type {cell_type!r}: expected one of {', '.join(CELL_TYPES)}")
        indices = sorted(word_to_idx.values())
        if indices != list(range(len(indices))):
            raise ValueError("word_to_idx must map its V words to the distinct indices 0 .. V-1")
        if NULL not in word_to_idx:
            raise ValueError(f"the vocabulary needs a {NULL} padding token")
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = [""] * len(word_to_idx)
        for word, idx in word_to_idx.items():
            self.idx_to_word[idx] = word
        self.input_dim, self.wordvec_dim, self.hidden_dim = int(input_dim), int(wordvec_dim), int(hidden_dim)
        self._null = word_to_idx[NULL]
        self._start = word_to_idx.get(START)
        self._end = word_to_idx.get(END)

        V, D, W, H = len(word_to_idx), self.input_dim, self.wordvec_dim, self.hidden_dim
        G = 4 * H if cell_type == "lstm" else H  # width of the recurrent pre-activations
        rng = np.random.default_rng(seed)
        params = {
            "W_proj": rng.standard_normal((D, H)) / np.sqrt(D),
            "b_proj": np.zeros(H),
            "W_embed": rng.standard_normal((V, W)) / 100.0,
            "Wx": rng.standard_normal((W, G)) / np.sqrt(W),
            "Wh": rng.standard_normal((H, G)) / np.sqrt(H),
            "b": np.zeros(G),
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        self.params = {k: v.astype(self.dtype) for k, v in params.items()}

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.idx_to_word)

    @property
    def null_idx(self) -> int:
        return self._null

    @property
    def start_idx(self) -> int | None:
        return self._start

    @property
    def end_idx(self) -> int | None:
        return self._end

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter for this model's dimensions and cell type."""
        V, D, W, H = self.vocab_size, self.input_dim, self.wordvec_dim, self.hidden_dim
        G = 4 * H if self.cell_type == "lstm" else H
        return {"W_proj": (D, H), "b_proj": (H,), "W_embed": (V, W), "Wx": (W, G), "Wh": (H, G),
                "b": (G,), "W_vocab": (H, V), "b_vocab": (V,)}

    # ------------------------------------------------------------------ training
    def loss(self, features: np.ndarray, captions: np.ndarray):
        """Teacher-forced loss and gradients of one minibatch.

        Inputs:
        - features: (N, D) image features
        - captions: (N, T + 1) integer word indices; the network reads ``captions[:, :-1]`` and
          predicts ``captions[:, 1:]``; positions whose target is ``<NULL>`` do not count.

        Returns ``(loss, grads)``: a float and a dict with the keys and shapes of ``self.params``.
        """
        p = self.params  # read on every call: a solver may replace the arrays
        features = np.asarray(features, dtype=self.dtype)
        captions = np.asarray(captions)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]  # (N, T), (N, T)
        mask = captions_out != self._null  # (N, T)

        h0, proj_cache = L.affine_forward(features, p["W_proj"], p["b_proj"])  # (N, H)
        x, embed_cache = L.word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        forward, backward = (L.lstm_forward, L.lstm_backward) if self.cell_type == "lstm" else (
            L.rnn_forward, L.rnn_backward)
        h, rnn_cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])  # (N, T, H)
        scores, vocab_cache = L.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])  # (N, T, V)
        loss, dscores = L.temporal_softmax_loss(scores, captions_out, mask)

        grads = {}
        dh, grads["W_vocab"], grads["b_vocab"] = L.temporal_affine_backward(dscores, vocab_cache)
        dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = backward(dh, rnn_cache)
        grads["W_embed"] = L.word_embedding_backward(dx, embed_cache)
        _, grads["W_proj"], grads["b_proj"] = L.affine_backward(dh0, proj_cache)
        return loss, grads

    # ------------------------------------------------------------------ decoding
    def sample(self, features: np.ndarray, max_length: int = 30) -> np.ndarray:
        """Greedy captions, as in the assignment.

        Inputs:
        - features: (N, D) image features
        - max_length: T, the number of tokens generated at most

        Returns (N, T) integer word indices, starting with the first generated word (``<START>``
        is not included); after ``<END>`` the row is padded with ``<NULL>``.
        """
        from pixelrpc.models.captioning.decoding import DecodeOptions, decode_batch

        features = np.asarray(features)
        options = DecodeOptions(strategy="greedy", max_length=max_length)
        results = decode_batch(self, features, [options] * len(features))
        out = np.full((len(features), max_length), self._null, dtype=np.int64)
        for n, captions in enumerate(results):
            tokens = captions[0].tokens
            out[n, : len(tokens)] = tokens
        return out

    def decode_ids(self, ids) -> str:
        """Words of a sequence of indices up to ``<END>``, without ``<START>``/``<NULL>``."""
        words = []
        for idx in ids:
            word = self.idx_to_word[int(idx)]
            if word == END:
                break
            if word not in (NULL, START):
                words.append(word)
        return " ".join(words)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """The manifest metadata that rebuilds this model (everything but the weights)."""
        return {
            "architecture": ARCHITECTURE,
            "cell_type": self.cell_type,
            "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim,
            "hidden_dim": self.hidden_dim,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "idx_to_word": list(self.idx_to_word),
        }

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace every parameter; raises ValueError naming the first missing or misshapen one."""
        expected = self.expected_shapes()
        if set(params) != set(expected):
            raise ValueError(
                f"parameters {sorted(params)} do not match the expected {sorted(expected)}")
        for key, shape in expected.items():
            if tuple(params[key].shape) != shape:
                raise ValueError(f"parameter {key} has shape {tuple(params[key].shape)}, expected {shape}")
        self.params = {k: np.asarray(params[k], dtype=self.dtype).copy() for k in expected}


def encoder_pin(encoder) -> dict | None:
    """``{"name", "version", "sha256"}`` of a feature-extraction model, from a Manifest, a dict or None."""
    if encoder is None:
        return None
    if isinstance(encoder, dict):
        missing = {"name", "version", "sha256"} - set(encoder)
        if missing:
            raise InvalidInput(f"encoder pin lacks {sorted(missing)}", field="encoder")
        return {"name": str(encoder["name"]), "version": int(encoder["version"]),
                "sha256": str(encoder["sha256"])}
    if "feature-extraction" not in encoder.tasks:
        raise InvalidInput(
            f"model {encoder.ref} cannot be a captioner's encoder: its tasks are {list(encoder.tasks)}, "
            "expected 'feature-extraction'", field="encoder")
    return {"name": encoder.name, "version": encoder.version, "sha256": encoder.sha256}


def save_to_registry(model: CaptioningRNN, registry, name: str, *, encoder=None, metadata=None,
                     extra_files: dict[str, bytes] | None = None):
    """Publish ``model`` as a new version of ``name`` (task ``captioning``) and return its Manifest.

    The weights go to ``params.safetensors``; vocabulary, dimensions, cell type and dtype to the
    manifest metadata. ``encoder`` (a feature-extraction Manifest, a ``{"name", "version",
    "sha256"}`` dict, or None for a captioner that only takes feature vectors) is pinned as
    ``metadata["encoder"]``. ``metadata`` adds keys (training settings, metrics); ``extra_files``
    adds files (e.g. ``loss_curve.png``).
    """
    from pixelrpc.models.registry.serialization import numpy_to_bytes

    meta = dict(metadata or {})
    meta.update(model.config())
    meta["encoder"] = encoder_pin(encoder)
    files = {PARAMS_FILE: numpy_to_bytes(model.params)}
    files.update(extra_files or {})
    return registry.publish(name, files, tasks=("captioning",), framework="numpy", metadata=meta)


def load_from_registry(manifest, read, device: str = "cpu") -> CaptioningRNN:
    """Registry loader for architecture ``captioning-rnn`` (``device`` is ignored: numpy runs on CPU)."""
    from pixelrpc.models.registry.serialization import numpy_from_bytes

    meta = manifest.metadata
    try:
        idx_to_word = list(meta["idx_to_word"])
        model = CaptioningRNN(
            {w: i for i, w in enumerate(idx_to_word)},
            input_dim=int(meta["input_dim"]),
            wordvec_dim=int(meta["wordvec_dim"]),
            hidden_dim=int(meta["hidden_dim"]),
            cell_type=str(meta["cell_type"]),
            dtype=np.dtype(str(meta.get("dtype", "float32"))),
            seed=0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelCorrupt(f"captioner {manifest.ref} has unusable metadata: {exc!r}") from exc
    params = numpy_from_bytes(read(PARAMS_FILE))
    try:
        model.set_params(params)
    except ValueError as exc:
        raise ModelCorrupt(f"captioner {manifest.ref}: {exc}") from exc
    return model

