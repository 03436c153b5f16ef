"""``pixelrpc.v1.ModelRegistry``: a read-only view of the registry, served by every process.

A broken entry (unreadable folder, manifest that is not a file, corrupt or unsealed manifest) never
hides the healthy ones: ``ListModels`` lists them and reports the broken ones in ``broken``. An
unreadable registry root answers UNAVAILABLE. ``GetModel`` adds what this process knows of a version:
whether it is loaded, whether it serves requests naming no version, and its golden examples' outcome.

Registry reads run on the control executor (``call.control``): they never take a job slot, so they
answer while inference keeps every slot busy.
"""

from __future__ import annotations

from pixelrpc.models.errors import InvalidInput, clip
from pixelrpc.services.convert import model_info
from pixelrpc.services.errors import status_code_for
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.v1 import registry_pb2, registry_pb2_grpc

SERVICE_NAME = "pixelrpc.v1.ModelRegistry"
CACHES_KEY = "caches"  # ServiceContext.state: every ModelCache of this process (one per service)


class ModelRegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    def _caches(self):
        return self.ctx.state.get(CACHES_KEY) or [self.ctx.cache]

    def _info(self, manifest):
        registry = self.ctx.registry
        try:
            is_default = registry.default_version(manifest.name) == manifest.version
        except Exception:  # noqa: BLE001 - a racing removal only affects the flag
            is_default = False
        caches = self._caches()
        golden = None
        for cache in caches:
            golden = golden or cache.golden_status(manifest.name, manifest.version)
        return model_info(
            manifest, is_default=is_default, golden=golden,
            loaded=any(c.is_loaded(manifest.name, manifest.version) for c in caches),
            serving=any(c.serving_default(manifest.name) == manifest.version for c in caches))

    @rpc
    async def ListModels(self, request: registry_pb2.ListModelsRequest, call: Call):
        tasks = self.ctx.tasks
        if request.task and tasks and request.task not in tasks:
            raise InvalidInput(f"task {clip(request.task)!r} is not served here (this process serves "
                               f"{', '.join(tasks)})", field="task")
        manifests, broken = await call.control(self.ctx.registry.scan, request.task or None,
                                           all_versions=request.all_versions)
        if tasks:
            manifests = [m for m in manifests if set(m.tasks) & set(tasks)]
        return registry_pb2.ListModelsResponse(
            models=[self._info(m) for m in manifests],
            broken=[registry_pb2.BrokenModel(name=b.name, version=b.version, code=status_code_for(b.error).name,
                                             reason=b.reason) for b in broken])

    @rpc
    async def GetModel(self, request: registry_pb2.GetModelRequest, call: Call):
        if not request.model.name:
            raise InvalidInput("model.name is required", field="model.name")
        manifest = await call.control(self.ctx.registry.resolve, request.model.name, request.model.version)
        return registry_pb2.GetModelResponse(model=self._info(manifest))


def add_to_server(server, ctx: ServiceContext) -> None:
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(ModelRegistryServicer(ctx), server)
