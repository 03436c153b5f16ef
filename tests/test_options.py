"""Typed options owned by the domain (issue 13, part 3): each default written once, checked by ``validate``;
a manifest's ``serving`` section parsed once; one parser of model references. Fast: no server, no model."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pixelrpc.common.refs import split_ref
from pixelrpc.models.errors import FailedPrecondition, InvalidInput, ModelCorrupt
from pixelrpc.models.options import with_defaults
from pixelrpc.models.registry import Manifest, ServingConfig, parse_ref
from pixelrpc.models.style import style_transfer_steps
from pixelrpc.models.style.options import DEFAULT_PRESET, StyleOptions
from pixelrpc.models.style.presets import PRESETS
from pixelrpc.models.visualization import class_visualization_steps, fooling_steps, saliency
from pixelrpc.models.visualization.options import (
    ClassifyOptions,
    ClassVisualizationOptions,
    FoolingOptions,
    IntegratedGradientsOptions,
    SaliencyOptions,
    SmoothGradOptions,
    default_max_jitter,
)

ROOT = Path(__file__).resolve().parents[1]


def defaults_of(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ---------------------------------------------------------------------------- one default, one place
def test_domain_functions_take_their_defaults_from_the_options():
    cv = defaults_of(class_visualization_steps)
    o = ClassVisualizationOptions()
    for name in ("l2_reg", "learning_rate", "num_iterations", "blur_every", "max_jitter", "show_every", "blur_sigma"):
        assert cv[name] == getattr(o, name), name
    sal = defaults_of(saliency)
    assert (sal["noise_level"], sal["samples"]) == (SmoothGradOptions().noise_level, SmoothGradOptions().samples)
    assert (sal["steps"], sal["baseline"]) == (IntegratedGradientsOptions().steps, IntegratedGradientsOptions().baseline)
    fool = defaults_of(fooling_steps)
    assert (fool["learning_rate"], fool["max_iters"]) == (FoolingOptions().learning_rate, FoolingOptions().max_iterations)
    style = defaults_of(style_transfer_steps)
    for name, value in StyleOptions().kwargs().items():
        if name != "seed":
            assert tuple(style[name]) == value if isinstance(value, tuple) else style[name] == value, name


def test_the_default_style_options_are_the_default_preset_and_the_assignments_schedule():
    o = StyleOptions()
    assert {k: getattr(o, k) for k in PRESETS[DEFAULT_PRESET].kwargs()} == PRESETS[DEFAULT_PRESET].kwargs()
    assert (o.iterations, o.lr, o.decayed_lr, o.decay_at, o.init, o.optimizer) == (200, 3.0, 0.1, 180, "content", "adam")
    scream = StyleOptions.from_preset("the_scream", iterations=7)
    assert scream.style_size == PRESETS["the_scream"].style_size and scream.iterations == 7
    with pytest.raises(InvalidInput, match="unknown style preset"):
        StyleOptions.from_preset("mona_lisa")


def test_the_jitter_rule_is_one_rule():
    assert default_max_jitter(224) == 16 and default_max_jitter(32) == 8
    o = ClassVisualizationOptions()
    assert o.jitter(40) == 10 and ClassVisualizationOptions(max_jitter=3).jitter(40) == 3
    assert o.side(64) == 64 and ClassVisualizationOptions(size=32).side(64) == 32


def test_with_defaults_fills_what_is_none():
    assert with_defaults(SmoothGradOptions, samples=None, noise_level=0.0) == SmoothGradOptions(noise_level=0.0)
    assert with_defaults(FoolingOptions, target_class=3, max_iterations=None).max_iterations == 100


# ---------------------------------------------------------------------------- validation
def field_of(exc: pytest.ExceptionInfo) -> str:
    return exc.value.violations[0].field


@pytest.mark.parametrize("options, field", [
    (SaliencyOptions(target_class=10), "target_class"),
    (SaliencyOptions(method="smoothgrad", smoothgrad=SmoothGradOptions(samples=1000)), "smoothgrad.samples"),
    (SaliencyOptions(method="smoothgrad", smoothgrad=SmoothGradOptions(seed=-1)), "smoothgrad.seed"),
    (SaliencyOptions(method="integrated_gradients", integrated_gradients=IntegratedGradientsOptions(steps=1)),
     "integrated_gradients.steps"),
    (SaliencyOptions(method="integrated_gradients", integrated_gradients=IntegratedGradientsOptions(baseline="x")),
     "integrated_gradients.baseline"),
    (SaliencyOptions(method="guided"), "method"),
])
def test_saliency_options_name_the_request_field(options, field):
    with pytest.raises(InvalidInput) as exc:
        options.validate(num_classes=10, max_iterations=500)
    assert field_of(exc) == field


def test_options_of_other_methods_are_not_checked():
    SaliencyOptions(smoothgrad=SmoothGradOptions(samples=10**6)).validate(10, 500)  # vanilla: ignored
    assert SaliencyOptions(method="vanilla").resolved().seed is None
    drawn = SaliencyOptions(method="smoothgrad").resolved()
    assert drawn.seed is not None and drawn.seed == drawn.smoothgrad.seed


@pytest.mark.parametrize("options, field", [
    (FoolingOptions(target_class=-1), "target_class"),
    (FoolingOptions(max_iterations=501), "max_iterations"),
    (FoolingOptions(learning_rate=float("nan")), "learning_rate"),
    (FoolingOptions(magnify=-1.0), "magnify"),
])
def test_fooling_options_name_the_request_field(options, field):
    with pytest.raises(InvalidInput) as exc:
        options.validate(num_classes=10, max_iterations=500)
    assert field_of(exc) == field


def test_class_visualization_options_check_the_servers_limits():
    ok = ClassVisualizationOptions(target_class=2).resolved()
    assert ok.validate(10, 64, 500, 256) is ok and ok.seed is not None
    with pytest.raises(InvalidInput, match=r"size must be between 8 and 256 \(this server's max_image_side\)"):
        ClassVisualizationOptions(size=512).validate(10, 64, 500, 256)
    with pytest.raises(InvalidInput) as exc:
        ClassVisualizationOptions(num_iterations=501).validate(10, 64, 500, 256)
    assert field_of(exc) == "num_iterations"
    with pytest.raises(InvalidInput, match="images is empty"):
        ClassifyOptions().validate(0)


def test_style_options_check_the_servers_limits_by_request_field():
    with pytest.raises(InvalidInput) as exc:
        StyleOptions(iterations=401).validate(400, 256, prefix="job.parameters.")
    assert field_of(exc) == "job.parameters.iterations"
    with pytest.raises(InvalidInput, match="style_size=512 is over this server's max_image_side=256") as exc:
        StyleOptions(style_size=512).validate(400, 256, prefix="job.parameters.")
    assert field_of(exc) == "job.parameters.style_size"


# ---------------------------------------------------------------------------- the serving section
def manifest(serving) -> Manifest:
    return Manifest(name="m", version=1, tasks=("captioning",), framework="numpy", files=(),
                    metadata={"serving": serving} if serving is not None else {})


def test_serving_section_is_parsed_once_into_a_typed_object():
    m = manifest({"max_concurrency": "2", "timeout_s": 5, "device": "cpu", "max_batch_size": 0,
                  "decode_dtype": "float64"})
    s = m.serving
    assert s is m.serving  # parsed once per manifest
    assert s == ServingConfig(device="cpu", max_concurrency=2, timeout_s=5.0, max_batch_size=0,
                              max_batch_delay_ms=None, decode_dtype="float64")
    assert manifest(None).serving == ServingConfig()
    # explicit server setting (a number > 0) > the manifest > the default
    assert s.setting("max_batch_size", 8, 32) == 8 and s.setting("max_batch_size", 0, 32) == 0
    assert s.setting("max_batch_delay_ms", -1.0, 5.0) == 5.0
    assert s.decode_dtype_for("", "m:1") == "float64" and s.decode_dtype_for("float32", "m:1") == "float32"


@pytest.mark.parametrize("serving", [{"timeout_s": "soon"}, {"max_concurrency": [1]}, ["cpu"]])
def test_a_serving_value_of_the_wrong_type_is_model_corrupt(serving):
    with pytest.raises(ModelCorrupt, match="m:1"):
        manifest(serving).serving  # noqa: B018


def test_a_bad_decode_dtype_is_failed_precondition_where_it_came_from():
    s = manifest({"decode_dtype": "float16"}).serving
    with pytest.raises(FailedPrecondition, match="model m:1's serving.decode_dtype is 'float16'"):
        s.decode_dtype_for("", "m:1")
    with pytest.raises(FailedPrecondition, match="PIXELRPC_DECODE_DTYPE is 'int8'"):
        ServingConfig().decode_dtype_for("int8", "m:1")


# ---------------------------------------------------------------------------- model references
@pytest.mark.parametrize("ref, parsed", [("m", ("m", 0)), ("m:3", ("m", 3)), ("", ("", 0)), ("m:", ("m", 0))])
def test_one_parser_of_model_references(ref, parsed):
    assert split_ref(ref) == parsed
    if ref:
        assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["m:latest", "m:-1", "m:1\n", "m:\u00b2", "m:9999999999", "m: 1"])
def test_bad_versions_are_refused_the_same_way_on_both_sides(ref):
    with pytest.raises(ValueError, match="expected NAME or NAME:VERSION"):
        split_ref(ref)
    with pytest.raises(InvalidInput, match="expected NAME or NAME:VERSION"):
        parse_ref(ref)


def test_no_module_parses_model_references_by_hand():
    offenders = []
    for folder in ("clients", "services", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if 'model.partition(":")' in text or '(model or "").partition(":")' in text or "ref.partition" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ---------------------------------------------------------------------------- thin servicers
@pytest.mark.parametrize("module", ["services/visualization.py", "services/style.py"])
def test_servicers_do_not_import_torch(module):
    tree = ast.parse((ROOT / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported and "numpy" not in imported


def test_the_reference_parser_is_light():
    import subprocess
    import sys

    code = ("import sys, pixelrpc.common.refs; "
            "print(sorted(m for m in ('torch', 'grpc', 'google.protobuf', 'pixelrpc.models', 'pixelrpc.clients') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
