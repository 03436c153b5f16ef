"""The protos carry each language's package option, so protoc generates every language without flags."""

from __future__ import annotations

from pixelrpc.v1 import (
    captioning_pb2,
    common_pb2,
    registry_pb2,
    server_pb2,
    style_transfer_pb2,
    visualization_pb2,
)

FILES = (captioning_pb2, common_pb2, registry_pb2, server_pb2, style_transfer_pb2, visualization_pb2)
# Same in every file of the package (buf's PACKAGE_SAME_* rules); go_package names the Go import path
# and package name of the generated code.
PACKAGE_OPTIONS = {
    "go_package": "github.com/pixelrpc/pixelrpc/gen/go/pixelrpc/v1;pixelrpcv1",
    "java_package": "io.pixelrpc.v1",
    "java_multiple_files": True,
    "csharp_namespace": "PixelRpc.V1",
    "php_namespace": "PixelRpc\\V1",
    "ruby_package": "PixelRpc::V1",
    "objc_class_prefix": "PXR",
}


def test_every_proto_file_names_its_package_in_every_language():
    for module in FILES:
        options = module.DESCRIPTOR.GetOptions()
        name = module.DESCRIPTOR.name
        assert {k: getattr(options, k) for k in PACKAGE_OPTIONS} == PACKAGE_OPTIONS, name
        stem = name.rsplit("/", 1)[-1].removesuffix(".proto")
        assert options.java_outer_classname == "".join(w.capitalize() for w in stem.split("_")) + "Proto"
