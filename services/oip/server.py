"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe V2, Triton's gRPC flavour).

Served by every PixelRPC process on its gRPC port, next to the native services (``create_server``):
the same registry, model cache, job slots, pixel budget, limits, bearer-token auth and metrics. Every
registry model that one of the process's services can run is an OIP model: its name and version
are the registry's, its task picks the adapter (``services/oip/models.py``) that turns the tensors
into the native servicer's domain call.

The servicer is thin like the native ones: ``@rpc`` gives every method the request id, access log
line, metrics and the one error table (bad tensors: INVALID_ARGUMENT naming the tensor; unknown
model: NOT_FOUND; a full queue: RESOURCE_EXHAUSTED). ``ModelStreamInfer`` answers the requests of a
stream in order, with any number of responses each (decoupled: style progress, caption tokens);
a failed request answers ``error_message`` (``CODE: message``) and the stream goes on.

``infer``, ``describe`` and ``model_ready`` are transport-free: KServe V2 REST on the HTTP port
(``services/http/v2.py``) calls them on this same servicer, so both transports run one
implementation. A call is served, and counted in the metrics, under the service that runs its model
(``locate`` -> ``Call.route``).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from pixelrpc.common.suite import SERVICES
from pixelrpc.inference import grpc_service_pb2 as pb
from pixelrpc.inference import grpc_service_pb2_grpc as pb_grpc
from pixelrpc.inference import model_config_pb2 as config_pb
from pixelrpc.models.errors import (
    FailedPrecondition,
    InvalidInput,
    ModelCorrupt,
    ModelNotFound,
    PixelRPCError,
    clip,
)
from pixelrpc.services.errors import status_code_for
from pixelrpc.services.oip.models import ADAPTERS, Adapter, InferRequest, InferResult, parse_version
from pixelrpc.services.oip.tensors import BYTES, inputs_of, parameters_of, set_parameter, write_outputs
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.services.server_info import READINESS_KEY, package_version

log = logging.getLogger("pixelrpc.oip")
SERVICE_NAME = "inference.GRPCInferenceService"
# Triton's protocol extensions PixelRPC implements (ServerMetadata.extensions).
EXTENSIONS = ("classification", "model_configuration", "model_repository", "parameters")
FULL_NAMES = {name: spec.full_name for name, spec in SERVICES.items()}  # the suite table's
CONFIG_TYPES = {"BOOL": config_pb.TYPE_BOOL, "UINT8": config_pb.TYPE_UINT8, "UINT16": config_pb.TYPE_UINT16,
                "UINT32": config_pb.TYPE_UINT32, "UINT64": config_pb.TYPE_UINT64, "INT8": config_pb.TYPE_INT8,
                "INT16": config_pb.TYPE_INT16, "INT32": config_pb.TYPE_INT32, "INT64": config_pb.TYPE_INT64,
                "FP16": config_pb.TYPE_FP16, "FP32": config_pb.TYPE_FP32, "FP64": config_pb.TYPE_FP64,
                BYTES: config_pb.TYPE_STRING}
FINAL = "triton_final_response"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, contexts: dict[str, ServiceContext]):
        self.contexts = contexts
        # Calls begin under the process's first service; ``locate`` hands each to the model's service.
        self.ctx = next(iter(contexts.values()))
        self.adapters: dict[str, Adapter] = {name: ADAPTERS[name](ctx) for name, ctx in contexts.items()
                                             if name in ADAPTERS}

    # ------------------------------------------------------------------ routing
    def _pick(self, manifest) -> tuple[str, Adapter]:
        for service, adapter in self.adapters.items():
            if adapter.task in manifest.tasks:
                return service, adapter
        served = ", ".join(a.task for a in self.adapters.values())
        raise ModelNotFound(f"model {manifest.ref} is not served here: its tasks are "
                            f"{', '.join(manifest.tasks)}, this server runs {served} models")

    async def locate(self, name: str, version: int, call: Call | None = None) -> tuple[str, Adapter, object]:
        """(service, adapter, manifest) of ``name:version``: NOT_FOUND when no service here runs it.
        With ``call``, the call is then served by that service (``Call.route``: its job slots, its
        metrics); without, the request is answered outside ``@rpc`` (REST metadata and readiness)."""
        if not name:
            raise InvalidInput("model_name is required: name a registry model (RepositoryIndex lists them)",
                               field="model_name")
        manifest = None
        for ctx in self.contexts.values():  # a loaded model needs no executor hop
            loaded = ctx.cache.peek(name, version)
            if loaded is not None:
                manifest = loaded.manifest
                break
        if manifest is None:
            manifest = await self._control(call, self.ctx.registry.resolve, name, version)
        service, adapter = self._pick(manifest)
        if call is not None:
            call.route(self.contexts[service])
            call.model = manifest.ref
        return service, adapter, manifest

    async def _control(self, call: Call | None, fn, *args):
        """Short registry work off the event loop: ``call.control``, or the control executor."""
        if call is not None:
            return await call.control(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.ctx.jobs.control, functools.partial(fn, *args))

    async def infer(self, req: InferRequest, call: Call) -> InferResult:
        """One inference request, whatever carried it (gRPC ModelInfer, V2 REST): routed to the
        adapter of the service that runs the model, within the call's deadline, which Triton's
        ``timeout`` request parameter (microseconds) may shorten."""
        try:
            timeout = request_timeout(req.parameters)
            _service, adapter, _manifest = await self.locate(req.model, req.version, call)
            if timeout:
                call.limit_deadline(timeout)
            async with call.deadline_scope():
                return await adapter.infer(req, call)
        except InvalidInput as exc:
            raise naming_tensor(exc) from None

    async def describe(self, name: str, version: int, call: Call | None = None) -> dict:
        """ModelMetadata, transport-free: name, versions, platform, inputs and outputs
        (``{"name", "datatype", "shape"}`` each)."""
        _service, adapter, manifest = await self.locate(name, version, call)
        versions = await self._control(call, self.ctx.registry.versions, manifest.name)
        inputs, outputs = adapter.describe(manifest)
        return {"name": manifest.name, "versions": [str(v) for v in versions],
                "platform": f"pixelrpc_{manifest.framework}",
                "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in inputs],
                "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in outputs]}

    async def model_ready(self, name: str, version: int, call: Call | None = None) -> bool:
        """Ready: the version resolves (sealed, verified manifest), a ready service of this process runs
        its task, and it did not fail its golden examples. A model not loaded yet is ready: it loads on
        its first request."""
        try:
            service, _adapter, manifest = await self.locate(name, version, call)
        except (ModelNotFound, FailedPrecondition, ModelCorrupt):
            return False
        golden = self.contexts[service].cache.golden_status(manifest.name, manifest.version)
        failed = golden is not None and golden.state == "failed"
        return self._ready(service) and not failed

    @staticmethod
    def _request(request: pb.ModelInferRequest) -> InferRequest:
        version = parse_version(request.model_version)
        return InferRequest(request.model_name, version, request.id, inputs_of(request),
                            {o.name: parameters_of(o.parameters) for o in request.outputs},
                            parameters_of(request.parameters))

    @staticmethod
    def _response(req: InferRequest, result: InferResult, stream: bool = False) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=req.id)
        write_outputs(response, result.outputs)
        for key, value in result.parameters.items():
            set_parameter(response.parameters, key, value)
        if stream:
            set_parameter(response.parameters, FINAL, result.final)
        return response

    # ------------------------------------------------------------------ health and metadata
    @rpc
    async def ServerLive(self, request, call: Call):
        return pb.ServerLiveResponse(live=True)

    def _ready(self, service: str | None = None) -> bool:
        readiness = self.ctx.state.get(READINESS_KEY) or {}
        names = [FULL_NAMES[service]] if service else [FULL_NAMES[s] for s in self.contexts if s in FULL_NAMES]
        return bool(names) and all(readiness.get(n, (False, ""))[0] for n in names)

    @rpc
    async def ServerReady(self, request, call: Call):
        return pb.ServerReadyResponse(ready=self._ready())

    @rpc
    async def ServerMetadata(self, request, call: Call):
        return pb.ServerMetadataResponse(name="pixelrpc", version=package_version(), extensions=list(EXTENSIONS))

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, call: Call):
        return pb.ModelReadyResponse(ready=await self.model_ready(request.name, parse_version(request.version), call))

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call):
        meta = await self.describe(request.name, parse_version(request.version), call)
        spec = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[spec(**t) for t in meta["inputs"]], outputs=[spec(**t) for t in meta["outputs"]])

    @rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, call: Call):
        _service, adapter, manifest = await self.locate(request.name, parse_version(request.version), call)
        inputs, outputs = adapter.describe(manifest)
        config = config_pb.ModelConfig(
            name=manifest.name, platform=f"pixelrpc_{manifest.framework}", backend="pixelrpc", max_batch_size=0,
            input=[config_pb.ModelInput(name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=list(s.shape),
                                        optional=s.optional) for s in inputs],
            output=[config_pb.ModelOutput(name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=list(s.shape))
                    for s in outputs],
            model_transaction_policy=config_pb.ModelTransactionPolicy(decoupled=adapter.decoupled))
        config.parameters["task"].string_value = adapter.task
        config.parameters["version"].string_value = str(manifest.version)
        config.parameters["sha256"].string_value = manifest.sha256
        if adapter.task == "captioning":
            config.dynamic_batching.SetInParent()  # the captioning batcher decodes callers together
        return pb.ModelConfigResponse(config=config)

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, call: Call):
        manifests, broken = await call.control(self.ctx.registry.scan, None, all_versions=True)
        tasks = {a.task for a in self.adapters.values()}
        index = pb.RepositoryIndexResponse.ModelIndex
        models = [index(name=m.name, version=str(m.version), state="READY")
                  for m in manifests if tasks & set(m.tasks)]
        if not request.ready:
            models += [index(name=b.name, version=str(b.version or ""), state="UNAVAILABLE",
                             reason=clip(b.reason, 500)) for b in broken]
        return pb.RepositoryIndexResponse(models=models)

    # ------------------------------------------------------------------ inference
    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, call: Call):
        try:
            req = self._request(request)
        except InvalidInput as exc:
            raise naming_tensor(exc) from None
        return self._response(req, await self.infer(req, call))

    @rpc
    async def ModelStreamInfer(self, request_iterator, call: Call):
        async for request in request_iterator:
            try:
                req = self._request(request)
                # each request's own limits: its ``timeout`` and its model's timeout_s and max_concurrency
                with call.item(request_timeout(req.parameters)) as item:
                    _service, adapter, _manifest = await self.locate(req.model, req.version, item)
                    async for result in item.within_deadline(adapter.stream(req, item)):
                        yield pb.ModelStreamInferResponse(infer_response=self._response(req, result, stream=True))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed request is answered; the stream goes on
                if isinstance(exc, InvalidInput):
                    exc = naming_tensor(exc)
                if isinstance(exc, PixelRPCError):
                    message = f"{status_code_for(exc).name}: {exc.message}"
                else:
                    log.error("ModelStreamInfer request %r failed (request id %s)", request.id, call.request_id,
                              exc_info=exc)
                    message = f"INTERNAL: internal error (request id {call.request_id}); the server logged the details"
                yield pb.ModelStreamInferResponse(error_message=clip(message, 1000), infer_response=pb.ModelInferResponse(
                    id=request.id, model_name=request.model_name, model_version=request.model_version))


def request_timeout(parameters: dict) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds; 0 or absent: none) in seconds."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameter timeout must be a whole number of microseconds >= 0, got "
                           f"{clip(repr(value))}", field="parameters.timeout")
    return value / 1e6 or None


def naming_tensor(exc: InvalidInput) -> InvalidInput:
    """The native helpers name their fields (``inputs[IMAGE][0]`` for an image of the IMAGE tensor) in
    the BadRequest details; tritonclient shows only the message, so it names the tensor too."""
    field = exc.violations[0].field if exc.violations else ""
    tensor = field[len("inputs["):].split("]", 1)[0] if field.startswith("inputs[") else ""
    if tensor and tensor not in exc.message:
        exc.message = f"{field}: {exc.message}"
        exc.args = (exc.message,)
    return exc


def add_to_server(server, contexts: dict[str, ServiceContext]) -> InferenceServicer:
    """Serve ``inference.GRPCInferenceService``; returns the servicer (the HTTP front's V2 REST uses it)."""
    servicer = InferenceServicer(contexts)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
