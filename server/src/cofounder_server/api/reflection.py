"""Server reflection, as ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection implements only v1alpha, while ``buf curl`` and newer grpcurl ask for v1
first. The two protocols are the same messages under another package, so one servicer
answers both: v1 calls are decoded with the v1alpha message classes (identical on the wire),
and the v1 file descriptor is derived from the v1alpha one so that reflection can describe
itself under both names.

Errors carry ``google.rpc`` details (BadRequest, ErrorInfo, RetryInfo, ResourceInfo,
QuotaFailure) packed in ``Any``; their file is imported here so that reflection can always
resolve them by name (``grpcurl -format-error`` decodes details that way).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
ERROR_DETAILS_FILE_NAME: str = error_details_pb2.DESCRIPTOR.name
"""``google/rpc/error_details.proto``: BadRequest, ErrorInfo, RetryInfo, ResourceInfo, QuotaFailure, ..."""

_METHOD = "ServerReflectionInfo"
METHODS = (f"/{V1_SERVICE_NAME}/{_METHOD}", f"/{V1ALPHA_SERVICE_NAME}/{_METHOD}")
"""The reflection methods served, as gRPC method paths."""


def _v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The v1alpha reflection file, renamed to the v1 package it was published as."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix, new_prefix = f".{v1alpha_pb2.DESCRIPTOR.package}.", f".{V1_PACKAGE}."
    proto.name = V1_FILE_NAME
    proto.package = V1_PACKAGE
    # v1alpha's options name its Java and Go packages and mark it deprecated: none apply.
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old_prefix, new_prefix, 1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_prefix, new_prefix, 1)
            method.output_type = method.output_type.replace(old_prefix, new_prefix, 1)
    return proto


def _ensure_v1_in(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE_NAME)
    except KeyError:
        pool.Add(_v1_file_descriptor())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` and for itself."""
    pool = descriptor_pool.Default()
    _ensure_v1_in(pool)
    servicer = ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE_NAME,
                {
                    _METHOD: grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
                        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
