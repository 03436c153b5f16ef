"""The default models, trained at bootstrap on the generated shapes world, gated, then published.

``pixelrpc models bootstrap`` calls ``Bootstrap(registry, plan).run()``, which

1. trains ``shapes-squeezenet``: torchvision's SqueezeNet 1.1 (Iandola et al., "SqueezeNet:
   AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360) with
   one output per class of ``pixelrpc.models.data.shapes.CLASS_NAMES``, on fresh scenes every epoch,
   with Adam (Kingma & Ba, ICLR 2015; decoupled weight decay, Loshchilov & Hutter, ICLR 2019), a
   linear warm-up and a cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017), at 96 px (the
   64-px scenes upsampled: SqueezeNet downsamples 16x), under bfloat16 autocast where the CPU has
   it. Training-only auxiliary heads (Caruana, "Multitask Learning", 1997) make the trunk describe
   the whole scene: a dense head on three trunk stages predicts, per cell, which class covers it
   (the masks of the generator), and linear heads on the 512-d pooled features (the captioner's
   input) predict every object's shape, colour, size and position (largest first), the relations
   of every pair and which classes are present. The heads are dropped before publishing; the
   published model is plain SqueezeNet 1.1;
2. gates it on held-out scenes: top-1 accuracy against the majority-class baseline, and the
   concentration of vanilla saliency maps (Simonyan et al., arXiv:1312.6034) on the objects;
3. writes a captioning data set in the CS231n COCO layout, extracts its 512-d features with the
   classifier as encoder, and trains ``shapes-captioner``, the numpy LSTM ``CaptioningRNN``
   (Vinyals et al., "Show and tell", CVPR 2015) with the captioning solver, on standardised
   features (folded into the image projection afterwards), each image's ``preferred_captions``,
   an image projection started from a linear probe of the scene description and forget gates
   biased open;
4. gates it: corpus BLEU-4 (Papineni et al., ACL 2002) of greedy captions on the held-out split
   against the best single constant caption, and explain-a-caption's maps on the objects its words
   name (``pixelrpc.models.captioning.explain_gate``), then publishes it with its encoder pinned.

A model below its gate is not published (``GateFailed``). Both manifests record the training data,
the seeds, the recipe and every held-out number beside its baseline.

Dimensions: N scenes, K = ``shapes.MAX_OBJECTS`` object slots, C = 19 coverage classes (18 object
classes and the background), S the network's square input side, h x w a trunk stage's grid,
F = 512 pooled features.

The package, by concern (no module imports one listed after it):

- ``plan``: model names, recipes, gate thresholds and the ``FULL`` and ``QUICK`` plans;
- ``scenes``: generated scenes as training tensors (targets, relations, coverage maps);
- ``classifier``: training and held-out evaluation of ``shapes-squeezenet``;
- ``captioner``: caption selection, initialisation and held-out evaluation of ``shapes-captioner``;
- ``gates``: the held-out checks each model must pass, and ``GateFailed``;
- ``golden``: the golden examples published with each model;
- ``runner``: ``Bootstrap`` and ``bootstrap``, which train, gate and publish.

Every public name is re-exported here: ``from pixelrpc.models.bootstrap import Bootstrap, QUICK``.
"""

from pixelrpc.models.bootstrap.captioner import (
    CaptionerReport,
    best_constant_caption,
    evaluate_captioner_against_constant,
    feature_statistics,
    fold_standardisation,
    init_forget_gate_bias,
    init_projection_from_probe,
    is_inverted_wording,
    largest_two_classes,
    mentioned_classes,
    preferred_captions,
    scene_description,
    standardise_features,
)
from pixelrpc.models.bootstrap.classifier import (
    DENSE_TAPS,
    SLOT_OUTPUTS,
    ClassifierReport,
    ClassifierStep,
    ShapesClassifierTraining,
    evaluate_classifier,
    held_out_batch,
    image_model,
    masks_at,
    model_inputs,
    predict,
    saliency_ratio,
    use_bfloat16,
    warmup_cosine,
)
from pixelrpc.models.bootstrap.gates import GateCheck, GateFailed, captioner_gates, classifier_gates, gate
from pixelrpc.models.bootstrap.golden import (
    GOLDEN_CANDIDATES,
    GOLDEN_EXAMPLES,
    GOLDEN_LOGPROB_TOLERANCE,
    GOLDEN_MIN_MARGIN,
    GOLDEN_PROBABILITY_TOLERANCE,
    captioner_golden,
    classifier_golden,
)
from pixelrpc.models.bootstrap.plan import (
    CAPTIONER_NAME,
    CAPTIONER_TRAINING,
    CLASSIFIER_NAME,
    CLASSIFIER_TASKS,
    FULL,
    PLANS,
    QUICK,
    SCENE_SIZE,
    CaptionerRecipe,
    ClassifierRecipe,
    Gates,
    Plan,
    seed_stream,
)
from pixelrpc.models.bootstrap.runner import (
    Bootstrap,
    BootstrapEvent,
    BootstrapReport,
    bootstrap,
    manifest_metadata,
)
from pixelrpc.models.bootstrap.scenes import (
    BACKGROUND,
    NUM_CLASSES,
    RELATION_WORDS,
    SLOT_PAIRS,
    coverage_maps,
    normalise,
    object_classes,
    relation_targets,
    resize_images,
    slot_targets,
)

__all__ = [
    "BACKGROUND",
    "Bootstrap",
    "BootstrapEvent",
    "BootstrapReport",
    "CAPTIONER_NAME",
    "CAPTIONER_TRAINING",
    "CLASSIFIER_NAME",
    "CLASSIFIER_TASKS",
    "CaptionerRecipe",
    "CaptionerReport",
    "ClassifierRecipe",
    "ClassifierReport",
    "ClassifierStep",
    "DENSE_TAPS",
    "FULL",
    "GOLDEN_CANDIDATES",
    "GOLDEN_EXAMPLES",
    "GOLDEN_LOGPROB_TOLERANCE",
    "GOLDEN_MIN_MARGIN",
    "GOLDEN_PROBABILITY_TOLERANCE",
    "GateCheck",
    "GateFailed",
    "Gates",
    "NUM_CLASSES",
    "PLANS",
    "Plan",
    "QUICK",
    "RELATION_WORDS",
    "SCENE_SIZE",
    "SLOT_OUTPUTS",
    "SLOT_PAIRS",
    "ShapesClassifierTraining",
    "best_constant_caption",
    "bootstrap",
    "captioner_gates",
    "captioner_golden",
    "classifier_gates",
    "classifier_golden",
    "coverage_maps",
    "evaluate_captioner_against_constant",
    "evaluate_classifier",
    "feature_statistics",
    "fold_standardisation",
    "gate",
    "held_out_batch",
    "image_model",
    "init_forget_gate_bias",
    "init_projection_from_probe",
    "is_inverted_wording",
    "largest_two_classes",
    "manifest_metadata",
    "masks_at",
    "mentioned_classes",
    "model_inputs",
    "normalise",
    "object_classes",
    "predict",
    "preferred_captions",
    "relation_targets",
    "resize_images",
    "saliency_ratio",
    "scene_description",
    "seed_stream",
    "slot_targets",
    "standardise_features",
    "use_bfloat16",
    "warmup_cosine",
]
