"""``pixelrpc.v1.ServerInfo``: what a process serves and its limits; a dry run of image decoding.

Neither takes a job slot: GetServerInfo answers from memory, DescribeImage reads the header on the
control executor, so both answer while inference keeps every slot busy.
"""

from __future__ import annotations

from importlib import metadata

from pixelrpc.models.imaging import describe_image
from pixelrpc.services.runtime import Call, ServiceContext, rpc
from pixelrpc.v1 import server_pb2, server_pb2_grpc

SERVICE_NAME = "pixelrpc.v1.ServerInfo"
# ServiceContext.state keys the server keeps current (services/server.py)
REGISTRY_STATUS_KEY = "registry_status"
READINESS_KEY = "readiness"


def package_version() -> str:
    try:
        return metadata.version("pixelrpc")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class ServerInfoServicer(server_pb2_grpc.ServerInfoServicer):
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx

    @rpc
    async def GetServerInfo(self, request, call: Call):
        s = self.ctx.settings
        limits = server_pb2.Limits(
            max_message_bytes=s.max_message_bytes, max_image_bytes=s.max_image_bytes,
            max_image_pixels=s.max_image_pixels, max_iterations=s.max_iterations,
            max_image_side=s.max_image_side, queue_depth=s.queue_depth, max_concurrency=s.max_concurrency,
            max_image_aspect=s.max_image_aspect, max_image_upscale=s.max_image_upscale,
            max_request_pixels=s.max_request_pixels, max_pixels_in_flight=s.max_pixels_in_flight,
            stream_stall_seconds=s.stream_stall_seconds, mutual_tls=bool(s.tls_cert and s.tls_client_ca))
        return server_pb2.GetServerInfoResponse(
            version=package_version(), services=list(self.ctx.services), device=self.ctx.device,
            limits=limits, auth_required=bool(s.auth_token), tls=bool(s.tls_cert), meta=call.meta(),
            registry=self._registry_status(), readiness=self._readiness())

    def _registry_status(self) -> server_pb2.RegistryStatus:
        """The registry's state as the server's watcher last saw it (every registry_refresh_seconds)."""
        status = self.ctx.state.get(REGISTRY_STATUS_KEY)
        if status is None:
            return server_pb2.RegistryStatus()
        return server_pb2.RegistryStatus(state=status.state, healthy=status.healthy, message=status.message)

    def _readiness(self) -> list[server_pb2.ServiceReadiness]:
        return [server_pb2.ServiceReadiness(service=name, ready=ready, reason=reason[:500])
                for name, (ready, reason) in sorted((self.ctx.state.get(READINESS_KEY) or {}).items())]

    @rpc
    async def DescribeImage(self, request: server_pb2.DescribeImageRequest, call: Call):
        info = await call.control(describe_image, request.image.data, self.ctx.settings.image_limits, "image")
        return server_pb2.DescribeImageResponse(
            format=info.format, width=info.width, height=info.height, mode=info.mode,
            accepted=info.accepted, reason=info.reason, meta=call.meta())


def add_to_server(server, ctx: ServiceContext) -> None:
    server_pb2_grpc.add_ServerInfoServicer_to_server(ServerInfoServicer(ctx), server)
