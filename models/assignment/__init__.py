"""CS231n 2017 assignment 3, as its notebooks call it: every function the assignment asks for, with
its signature and return type, backed by PixelRPC's domain code (thin adapters, no second
implementation). ``models/assignment/README.md`` lists what each name maps to and the few choices
made where the notebook plots or keeps globals.

    from pixelrpc.models.assignment import *   # in place of the cs231n imports

- RNN_Captioning / LSTM_Captioning (``cs231n.rnn_layers``, ``cs231n.classifiers.rnn``,
  ``cs231n.gradient_check``): ``captioning.py``.
- NetworkVisualization-PyTorch: ``visualization.py``.
- StyleTransfer-PyTorch: ``style.py``.
"""

from pixelrpc.models.assignment.captioning import (
    CaptioningRNN,
    affine_backward,
    affine_forward,
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    lstm_backward,
    lstm_forward,
    lstm_step_backward,
    lstm_step_forward,
    rel_error,
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    sigmoid,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
    word_embedding_backward,
    word_embedding_forward,
)
from pixelrpc.models.assignment.style import (
    content_loss,
    extract_features,
    gram_matrix,
    style_loss,
    style_transfer,
    tv_loss,
)
from pixelrpc.models.assignment.visualization import (
    compute_saliency_maps,
    create_class_visualization,
    jitter,
    make_fooling_image,
)

__all__ = [
    "CaptioningRNN",
    "affine_backward",
    "affine_forward",
    "compute_saliency_maps",
    "content_loss",
    "create_class_visualization",
    "eval_numerical_gradient",
    "eval_numerical_gradient_array",
    "extract_features",
    "gram_matrix",
    "jitter",
    "lstm_backward",
    "lstm_forward",
    "lstm_step_backward",
    "lstm_step_forward",
    "make_fooling_image",
    "rel_error",
    "rnn_backward",
    "rnn_forward",
    "rnn_step_backward",
    "rnn_step_forward",
    "sigmoid",
    "style_loss",
    "style_transfer",
    "temporal_affine_backward",
    "temporal_affine_forward",
    "temporal_softmax_loss",
    "tv_loss",
    "word_embedding_backward",
    "word_embedding_forward",
]
