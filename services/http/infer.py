"""Open Inference Protocol (KServe V2) inference for the HTTP front, against one small interface.

A backend per service answers ``await infer(call, request) -> {output name: np.ndarray}`` for an
``InferRequest`` (model name and version, inputs as numpy arrays, requested outputs with their
parameters, request parameters), and ``metadata(loaded)``. Both call the SAME servicer helpers the
native RPCs use (``VisualizationServicer._admit``/``_model`` and the ``pixelrpc.models.visualization``
functions; ``CaptioningServicer.caption``, i.e. the model's dynamic batcher), so the REST layer
(``services/http/v2.py``) and the OIP gRPC layer can share one implementation. BYTES tensors are numpy
object arrays of ``bytes`` (or ``str``: base64 text from JSON, see ``tensor_bytes``).

Tensor names (docs/http.md): classifiers take ``IMAGE`` (BYTES [N]) or ``PIXELS`` (UINT8 [N, H, W, 3])
and ``TARGET_CLASS`` (INT32 [N], optional), give ``PROBABILITIES`` (FP32 [N, C], Triton's
``classification`` parameter gives BYTES [N, k] "score:index:label") and ``SALIENCY`` (FP32 [N, S, S],
vanilla gradients, Simonyan et al. 2014, when requested); captioners take ``FEATURES`` (FP32 [N, D])
or ``IMAGE`` (BYTES [N]) and give ``CAPTION`` (BYTES [N]), ``TOKENS`` (INT32 [N, T], 0-padded) and
``LOG_PROB`` (FP32 [N]). Style over V2 REST is left to the OIP gRPC side (not served here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.models.registry import LoadedModel
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.v1 import common_pb2

MAX_BATCH = 64  # images or feature rows per inference request (Classify's limit)


@dataclass
class InferRequest:
    model_name: str
    version: int = 0
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)  # requested output -> its parameters; {}: defaults
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""


def tensor_bytes(value, name: str, index: int) -> bytes:
    """One BYTES element: bytes as sent in binary, or base64 text (JSON cannot carry raw bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {name}[{index}]: BYTES image elements sent as JSON must be base64 text "
                           "(or use the binary tensor extension)", field=f"inputs[{name}]") from None


def _check(inputs: dict[str, np.ndarray], name: str, kinds: str, rank: int | None,
           last: int | None = None, batch: int | None = None) -> np.ndarray:
    """The input ``name`` with its dtype kind in ``kinds`` (numpy kind letters) and shape checked."""
    arr = inputs[name]
    if arr.dtype.kind not in kinds:
        raise InvalidInput(f"input {name} has the wrong datatype ({arr.dtype}); see the model's metadata",
                           field=f"inputs[{name}].datatype")
    if (rank is not None and arr.ndim != rank) or (last is not None and arr.shape[-1] != last) \
            or (batch is not None and arr.shape[0] != batch):
        want = f"rank {rank}" + (f", last dimension {last}" if last is not None else "") + \
            (f", batch {batch}" if batch is not None else "")
        raise InvalidInput(f"input {name} has shape {list(arr.shape)}; expected {want}",
                           field=f"inputs[{name}].shape")
    if arr.ndim and not 1 <= arr.shape[0] <= MAX_BATCH:
        raise InvalidInput(f"input {name}: the batch must hold 1..{MAX_BATCH} items, got {arr.shape[0]}",
                           field=f"inputs[{name}].shape")
    return arr


def _one_of(inputs: dict, names: tuple[str, ...]) -> str:
    given = [n for n in names if n in inputs]
    if len(given) != 1:
        raise InvalidInput(f"send exactly one of the inputs {', '.join(names)} (got {', '.join(given) or 'none'})",
                           field="inputs")
    return given[0]


def _unknown(req: InferRequest, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    for name in req.inputs:
        if name not in inputs:
            raise InvalidInput(f"unknown input {clip(name)!r}: this model takes {', '.join(inputs)}",
                               field=f"inputs[{clip(name)}]")
    for name in req.outputs:
        if name not in outputs:
            raise InvalidInput(f"unknown output {clip(name)!r}: this model gives {', '.join(outputs)}",
                               field=f"outputs[{clip(name)}]")


def _ref(req: InferRequest) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=req.model_name, version=int(req.version))


# ---------------------------------------------------------------------------- classifiers
class ClassifierInfer:
    """Visualization service: ``IMAGE``/``PIXELS`` -> ``PROBABILITIES``, ``SALIENCY``."""

    task = "classification"
    inputs = ("IMAGE", "PIXELS", "TARGET_CLASS")
    outputs = ("PROBABILITIES", "SALIENCY")

    def __init__(self, servicer):
        self.servicer = servicer  # services.visualization.VisualizationServicer
        self.ctx: ServiceContext = servicer.ctx

    def metadata(self, loaded: LoadedModel) -> dict:
        model = loaded.model
        c, s = int(getattr(model, "num_classes", -1)), int(getattr(model, "input_size", -1))
        return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]},
                           {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
                           {"name": "TARGET_CLASS", "datatype": "INT32", "shape": [-1]}],
                "outputs": [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, c]},
                            {"name": "SALIENCY", "datatype": "FP32", "shape": [-1, s, s]}]}

    async def infer(self, call: Call, req: InferRequest) -> dict[str, np.ndarray]:
        import torch
        from PIL import Image

        from pixelrpc.models import visualization as vis
        from pixelrpc.models.visualization.classify import class_label
        from pixelrpc.v1 import visualization_pb2 as vpb

        _unknown(req, self.inputs, self.outputs)
        which = _one_of(req.inputs, ("IMAGE", "PIXELS"))
        wanted = set(req.outputs) or {"PROBABILITIES"}
        request_pb = vpb.ClassifyRequest(model=_ref(req))
        if which == "IMAGE":
            arr = _check(req.inputs, "IMAGE", "OSU", 1)
            images = [(common_pb2.Image(data=tensor_bytes(v, "IMAGE", i)), f"IMAGE[{i}]") for i, v in enumerate(arr)]
            loaded, model, _, admitted = await self.servicer._admit(request_pb, call, images)
            decode = admitted.decode
        else:
            arr = _check(req.inputs, "PIXELS", "u", 4, last=3)
            limits = self.ctx.settings.image_limits
            if max(arr.shape[1:3]) > limits.max_side or arr.shape[0] * arr.shape[1] * arr.shape[2] > limits.max_request_pixels:
                raise InvalidInput(f"input PIXELS {list(arr.shape)} is over this server's limits (max side "
                                   f"{limits.max_side}, {limits.max_request_pixels:,} pixels per request)",
                                   field="inputs[PIXELS].shape")
            loaded, model = await call.control(self.servicer._model, request_pb, call)
            pixels = arr.astype(np.uint8, copy=False)

            def decode():
                return [Image.fromarray(np.ascontiguousarray(p), mode="RGB") for p in pixels]
        n = arr.shape[0]
        targets = None
        if "TARGET_CLASS" in req.inputs:
            t = _check(req.inputs, "TARGET_CLASS", "iu", 1, batch=n)
            targets = [self.servicer._check_class(model, int(v), "TARGET_CLASS") for v in t]

        def work() -> dict[str, np.ndarray]:
            x = model.preprocess(decode())  # (N, 3, S, S)
            with torch.no_grad():
                preds = vis.classify(x, model, top_k=model.num_classes)
            probs = np.zeros((n, model.num_classes), np.float32)
            for i, row in enumerate(preds):
                for p in row:
                    probs[i, p.class_index] = p.probability
            out = {"PROBABILITIES": probs}
            if "SALIENCY" in wanted:
                ys = targets if targets is not None else [int(i) for i in probs.argmax(1)]
                result = vis.saliency(x, ys, model, "vanilla", cancel=call.cancel)
                out["SALIENCY"] = result.maps.float().cpu().numpy().astype(np.float32)  # (N, S, S)
            k = int((req.outputs.get("PROBABILITIES") or {}).get("classification") or 0)
            if k > 0:  # Triton's classification extension: the k best as "score:index:label"
                top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                out["PROBABILITIES"] = np.array(
                    [[f"{probs[i, j]:f}:{j}:{class_label(model, int(j))}".encode() for j in row]
                     for i, row in enumerate(top)], dtype=object)
            return out

        result = await call.run(work)
        call.meta(loaded)  # records the model for the access log
        call.annotations["model_version"] = loaded.manifest.version
        return {name: value for name, value in result.items() if name in wanted}


# ---------------------------------------------------------------------------- captioners
class CaptionerInfer:
    """Captioning service: ``FEATURES``/``IMAGE`` -> ``CAPTION``, ``TOKENS``, ``LOG_PROB``.

    Each row is one native ``CaptionJob`` captioned by ``CaptioningServicer.caption``: the same
    planning, image encoder and dynamic batcher as ``Caption`` (rows of one request batch with each
    other and with every other caller). Parameters: ``strategy`` (greedy, beam, sample; default greedy,
    or beam when ``beam_width`` > 1, or sample when ``temperature`` or ``seed`` is given), ``beam_width``,
    ``max_length``, ``temperature``, ``seed``, ``length_penalty``.
    """

    task = "captioning"
    inputs = ("FEATURES", "IMAGE")
    outputs = ("CAPTION", "TOKENS", "LOG_PROB")

    def __init__(self, servicer):
        self.servicer = servicer  # services.captioning.CaptioningServicer
        self.ctx: ServiceContext = servicer.ctx

    def metadata(self, loaded: LoadedModel) -> dict:
        d = int(getattr(loaded.model, "input_dim", -1))
        return {"inputs": [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, d]},
                           {"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "CAPTION", "datatype": "BYTES", "shape": [-1]},
                            {"name": "TOKENS", "datatype": "INT32", "shape": [-1, -1]},
                            {"name": "LOG_PROB", "datatype": "FP32", "shape": [-1]}]}

    @staticmethod
    def options(parameters: dict):
        from pixelrpc.v1 import captioning_pb2 as cpb

        p = parameters
        strategy = str(p.get("strategy") or ("beam" if int(p.get("beam_width") or 0) > 1 else
                                            "sample" if "temperature" in p or "seed" in p else "greedy"))
        enums = {"greedy": cpb.DECODING_STRATEGY_GREEDY, "beam": cpb.DECODING_STRATEGY_BEAM,
                 "sample": cpb.DECODING_STRATEGY_SAMPLE}
        if strategy not in enums:
            raise InvalidInput(f"parameter strategy must be greedy, beam or sample, got {clip(strategy)!r}",
                               field="parameters.strategy")
        try:
            opts = cpb.CaptionOptions(strategy=enums[strategy], max_length=int(p.get("max_length") or 0),
                                      beam_width=int(p.get("beam_width") or 0),
                                      length_penalty=float(p.get("length_penalty") or 0.0))
            if "temperature" in p:
                opts.temperature = float(p["temperature"])
            if "seed" in p:
                opts.seed = int(p["seed"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"a caption parameter is not a number in range: {clip(str(exc))}",
                               field="parameters") from None
        return opts

    async def _row(self, job, call: Call, which: str, index: int):
        """One row through ``CaptioningServicer.caption``; its errors name the tensor, not the job field."""
        try:
            return await self.servicer.caption(job, call)
        except InvalidInput as exc:
            if any(v.field.startswith(("job.features", "job.image")) for v in exc.violations):
                raise InvalidInput(f"input {which}[{index}]: {exc.message}", field=f"inputs[{which}]") from None
            raise

    async def infer(self, call: Call, req: InferRequest) -> dict[str, np.ndarray]:
        from pixelrpc.services.convert import numpy_to_tensor
        from pixelrpc.v1 import captioning_pb2 as cpb

        _unknown(req, self.inputs, self.outputs)
        which = _one_of(req.inputs, self.inputs)
        opts = self.options(req.parameters)
        jobs = []
        if which == "FEATURES":
            arr = _check(req.inputs, "FEATURES", "f", 2)
            for row in arr:
                jobs.append(cpb.CaptionJob(model=_ref(req), options=opts, features=numpy_to_tensor(row.astype(np.float32))))
        else:
            arr = _check(req.inputs, "IMAGE", "OSU", 1)
            for i, v in enumerate(arr):
                jobs.append(cpb.CaptionJob(model=_ref(req), options=opts,
                                           image=common_pb2.Image(data=tensor_bytes(v, "IMAGE", i))))
        try:
            async with asyncio.TaskGroup() as group:  # one failing row cancels the others
                tasks = [group.create_task(self._row(job, call, which, i)) for i, job in enumerate(jobs)]
        except BaseExceptionGroup as failed:  # answer with the first row's error, as a unary call would
            raise failed.exceptions[0] from None
        results = [t.result() for t in tasks]
        call.annotations["model_version"] = results[0].meta.model_version
        best = [r.captions[0] for r in results]
        width = max((len(c.tokens) for c in best), default=0)
        tokens = np.zeros((len(best), width), np.int32)
        for i, c in enumerate(best):
            tokens[i, :len(c.tokens)] = [t.id for t in c.tokens]
        out = {"CAPTION": np.array([c.text.encode() for c in best], dtype=object),
               "TOKENS": tokens, "LOG_PROB": np.array([c.logprob for c in best], np.float32)}
        wanted = set(req.outputs) or set(self.outputs)
        return {name: value for name, value in out.items() if name in wanted}


BACKENDS = {"visualization": ("/pixelrpc.v1.VisualizationService/Classify", ClassifierInfer),
            "captioning": ("/pixelrpc.v1.CaptioningService/Caption", CaptionerInfer)}


def backends_for(handlers: dict, contexts: dict) -> dict[str, object]:
    """service name -> its backend, built on the servicer instance the gRPC server registered."""
    out = {}
    for service, (method, cls) in BACKENDS.items():
        handler = handlers.get(method)
        servicer = getattr(getattr(handler, "unary_unary", None), "__self__", None)
        if service in contexts and servicer is not None:
            out[service] = cls(servicer)
    return out


class InferServicer:
    """``ModelInfer`` under ``@rpc``: request id, access log, metrics and error mapping as any RPC.

    ``decode(raw) -> (InferRequest, extra)`` runs inside the call (so a malformed body is counted and
    answered with the request id); the result is ``(request, extra, outputs, model version)``.
    """

    def __init__(self, ctx: ServiceContext, backend):
        self.ctx = ctx
        self.backend = backend

    @rpc
    async def ModelInfer(self, raw, call: Call):  # noqa: N802 - the OIP method name, as in the metrics
        decode = raw[0]
        request, extra = decode(*raw[1:])
        call.model = request.model_name
        outputs = await self.backend.infer(call, request)
        return request, extra, outputs, int(call.annotations.get("model_version") or request.version)
