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
- V: vocabulary size, ``len(word_to_idx)`` as the assignment computes it

Sparse vocabularies. The assignment's own checks use ``{'<NULL>': 0, 'cat': 2, 'dog': 3}``: V = 3
words, but the indices are not 0 .. V-1. The model is built exactly as the assignment builds it: V
rows of ``W_embed``, V scores, so it reads and predicts the indices 0 .. V-1 and nothing else. An
index in 0 .. V-1 that no word maps to (1 above) is a *hole*: it has an embedding and a score like
any other and is named ``<#i>`` (``hole_name``) in ``idx_to_word``. A word whose index is V or more
('dog' above) is *out of range*: the model can neither read nor predict it; it stays in
``word_to_idx`` (and in the registry manifest) and ``decode_ids`` still names it. Such a vocabulary
is accepted with one warning (logger ``pixelrpc.models.captioning.captioning_rnn``); only a
``<START>``/``<END>`` out of range makes the model unable to decode (``start_idx``/``end_idx`` are
then None and sampling raises FailedPrecondition).
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from pixelrpc.models.captioning import rnn_layers as L
from pixelrpc.models.captioning.decoding import WEIGHTS_CACHE, DecodeOptions, decode_batch
from pixelrpc.models.captioning.vocab import END, NULL, START
from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt

CELL_TYPES = ("rnn", "lstm")
ARCHITECTURE = "captioning-rnn"
PARAMS_FILE = "params.safetensors"

log = logging.getLogger(__name__)


def hole_name(idx: int) -> str:
    """The name ``idx_to_word`` gives an index of 0 .. V-1 that no word of a sparse vocabulary maps to."""
    return f"<#{idx}>"


def check_vocabulary(word_to_idx) -> dict[str, int]:
    """A copy of ``word_to_idx`` as ``{str: int}``, or ValueError naming what is wrong.

    Refused: an empty vocabulary, a non-string word, an index that is not a non-negative integer, two
    words sharing an index, no ``<NULL>``. Accepted with a warning: indices other than 0 .. V-1 (a
    sparse vocabulary, see the module docstring).
    """
    if not hasattr(word_to_idx, "items") or len(word_to_idx) == 0:
        raise ValueError("word_to_idx must be a non-empty mapping from words to indices")
    vocab: dict[str, int] = {}
    owner: dict[int, str] = {}
    for word, idx in word_to_idx.items():
        if not isinstance(word, str):
            raise ValueError(f"word_to_idx keys must be strings, got {word!r}")
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral) or idx < 0:
            raise ValueError(f"word_to_idx[{word!r}] must be a non-negative integer index, got {idx!r}")
        if int(idx) in owner:
            raise ValueError(f"word_to_idx maps both {owner[int(idx)]!r} and {word!r} to index {int(idx)}")
        owner[int(idx)] = word
        vocab[word] = int(idx)
    if NULL not in vocab:
        raise ValueError(f"the vocabulary needs a {NULL} padding token")
    V = len(vocab)
    holes = [i for i in range(V) if i not in owner]
    beyond = sorted((i, w) for i, w in owner.items() if i >= V)
    if holes or beyond:
        parts = []
        if holes:
            parts.append(f"no word has the indices {holes[:10]}{' ...' if len(holes) > 10 else ''} (they "
                         f"get scores and embeddings like any word, named {hole_name(holes[0])} etc.)")
        if beyond:
            named = ", ".join(f"{w!r} ({i})" for i, w in beyond[:10])
            parts.append(f"{named}{' ...' if len(beyond) > 10 else ''} lie beyond V-1 = {V - 1}: the model "
                         "can neither read nor predict them")
        log.warning("sparse vocabulary of V = %d words: %s", V, "; ".join(parts))
    return vocab


class CaptioningRNN:
    """Image features -> h0 -> recurrent network -> vocabulary scores at every step.

    Parameters (in ``self.params``, all of ``dtype``): ``W_proj`` (D, H), ``b_proj`` (H,),
    ``W_embed`` (V, W), ``Wx`` (W, H) or (W, 4H) for the LSTM, ``Wh`` (H, H) or (H, 4H),
    ``b`` (H,) or (4H,), ``W_vocab`` (H, V), ``b_vocab`` (V,).
    """

    def __getstate__(self) -> dict:
        """Pickled (to the caption decoding process) without caches built from the weights: the
        decoding layout holds BLAS function objects and is rebuilt where it is used."""
        return {k: v for k, v in self.__dict__.items() if k != WEIGHTS_CACHE}

    def __init__(self, word_to_idx: dict[str, int], input_dim: int = 512, wordvec_dim: int = 128,
                 hidden_dim: int = 128, cell_type: str = "rnn", dtype=np.float32, *,
                 seed: int | None = None):
        """Inputs:
        - word_to_idx: vocabulary, V = len(word_to_idx) words, each with its own non-negative index;
          normally exactly 0 .. V-1, but a sparse vocabulary is accepted with a warning (see the
          module docstring). ``<NULL>`` (padding), ``<START>`` and ``<END>`` are looked up here;
          ``<NULL>`` is needed to compute the loss, ``<START>``/``<END>`` only to decode.
        - input_dim: D; wordvec_dim: W; hidden_dim: H.
        - cell_type: ``"rnn"`` or ``"lstm"``.
        - dtype: dtype of the parameters and of the computation (float64 for gradient checks).
        - seed: seeds the weight initialisation (None: fresh entropy).
        """
        if cell_type not in CELL_TYPES:
            raise ValueError(f"invalid cell_type {cell_type!r}: expected one of {', '.join(CELL_TYPES)}")
        word_to_idx = check_vocabulary(word_to_idx)
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        self.word_to_idx = word_to_idx
        V = len(word_to_idx)
        # The V words the model reads and predicts, by index; holes of a sparse vocabulary get a name
        # that no word of the vocabulary has.
        self.idx_to_word = [hole_name(i) for i in range(V)]
        self._out_of_range: dict[int, str] = {}  # index >= V -> word, for decode_ids
        for word, idx in word_to_idx.items():
            if idx < V:
                self.idx_to_word[idx] = word
            else:
                self._out_of_range[idx] = word
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
        """Index of ``<START>``, or None when the vocabulary lacks it or it lies beyond V-1."""
        return self._start if self._start is not None and self._start < self.vocab_size else None

    @property
    def end_idx(self) -> int | None:
        """Index of ``<END>``, or None when the vocabulary lacks it or it lies beyond V-1."""
        return self._end if self._end is not None and self._end < self.vocab_size else None

    @property
    def is_sparse(self) -> bool:
        """Whether the vocabulary's indices are anything but exactly 0 .. V-1."""
        return bool(self._out_of_range)  # with V words, an index beyond V-1 exists iff a hole does

    def check_decodable(self) -> None:
        """Raise FailedPrecondition unless this model can decode (its ``<START>`` and ``<END>`` are
        among the V indices it reads and predicts)."""
        problems = []
        for token, idx in ((START, self._start), (END, self._end)):
            if idx is None:
                problems.append(f"its vocabulary has no {token}")
            elif idx >= self.vocab_size:
                problems.append(f"{token} has index {idx}, beyond the V-1 = {self.vocab_size - 1} it can predict")
        if problems:
            raise FailedPrecondition(
                f"this captioner cannot sample captions: {'; '.join(problems)}. Its loss still works; to "
                f"decode, give the vocabulary {START} and {END} among the indices 0 .. V-1 and train it "
                "on captions that include both tokens")

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
        if captions.size and (captions.min() < 0 or captions.max() >= self.vocab_size):
            bad = int(captions.max()) if captions.max() >= self.vocab_size else int(captions.min())
            raise InvalidInput(f"caption index {bad} is outside the indices 0 .. {self.vocab_size - 1} this "
                               f"captioner reads (V = {self.vocab_size})", field="captions")
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
        is not included); after ``<END>`` the row is padded with ``<NULL>``. The same greedy decoding
        as ``decoding.greedy`` (batched by ``decoding.decode_batch``).
        """
        self.check_decodable()
        features = np.asarray(features)
        options = DecodeOptions(strategy="greedy", max_length=max_length)
        results = decode_batch(self, features, [options] * len(features))
        out = np.full((len(features), max_length), self._null, dtype=np.int64)
        for n, captions in enumerate(results):
            tokens = captions[0].tokens
            out[n, : len(tokens)] = tokens
        return out

    def decode_ids(self, ids) -> str:
        """Words of a sequence of indices up to ``<END>``, without ``<START>``/``<NULL>``.

        Every index of the vocabulary decodes to its word, also one beyond V-1 that the model itself
        never produces; a hole of a sparse vocabulary (an index below V without a word) to its
        ``<#i>`` name. Any other index (negative, or beyond V-1 with no word) is an InvalidInput.
        """
        words = []
        for idx in ids:
            word = self.word_of(int(idx))
            if word == END:
                break
            if word not in (NULL, START):
                words.append(word)
        return " ".join(words)

    def word_of(self, idx: int) -> str:
        """The word of one index, as ``decode_ids`` names it."""
        if 0 <= idx < self.vocab_size:
            return self.idx_to_word[idx]
        if idx in self._out_of_range:
            return self._out_of_range[idx]
        raise InvalidInput(f"word index {idx} is not in this captioner's vocabulary (V = {self.vocab_size}, "
                           f"indices 0 .. {self.vocab_size - 1})", field="ids")

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """The manifest metadata that rebuilds this model (everything but the weights).

        A sparse vocabulary also stores ``word_to_idx`` (``idx_to_word`` alone, with its hole names,
        cannot give back the words beyond V-1 or the holes).
        """
        config = {
            "architecture": ARCHITECTURE,
            "cell_type": self.cell_type,
            "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim,
            "hidden_dim": self.hidden_dim,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype.name,
            "idx_to_word": list(self.idx_to_word),
        }
        if self.is_sparse:
            config["word_to_idx"] = dict(self.word_to_idx)
        return config

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
        if "word_to_idx" in meta:  # a sparse vocabulary
            word_to_idx = dict(meta["word_to_idx"])
        else:
            word_to_idx = {w: i for i, w in enumerate(meta["idx_to_word"])}
        model = CaptioningRNN(
            word_to_idx,
            input_dim=int(meta["input_dim"]),
            wordvec_dim=int(meta["wordvec_dim"]),
            hidden_dim=int(meta["hidden_dim"]),
            cell_type=str(meta["cell_type"]),
            dtype=np.dtype(str(meta.get("dtype", "float32"))),
            seed=0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelCorrupt(f"captioner {manifest.ref} has unusable metadata: {exc!r}") from exc
    if (list(meta["idx_to_word"]) != model.idx_to_word
            or int(meta.get("vocab_size", model.vocab_size)) != model.vocab_size):
        raise ModelCorrupt(f"captioner {manifest.ref} has unusable metadata: its idx_to_word, vocab_size and "
                           "word_to_idx disagree")
    params = numpy_from_bytes(read(PARAMS_FILE))
    try:
        model.set_params(params)
    except ValueError as exc:
        raise ModelCorrupt(f"captioner {manifest.ref}: {exc}") from exc
    return model

