"""The wire facts that Fabula's servers and its SDK must agree on, each written once.

It depends only on the generated protos (and protobuf/grpcio), so the SDK can install it without
any server code: object types with their path names and protobuf numbers (`objects`), how a
failed gRPC call reads over HTTP and what it carries (`status`), the values the text service
accepts for a generation request's numeric controls (`sampling`), and how the gateway and the
editor put several requests or answers into one message of the editor's ObjectData stream
(`object_data`).
"""

from fabula_wire.objects import ObjectType
from fabula_wire.status import (
    HTTP_STATUS_BY_GRPC_CODE,
    STATUS_DETAILS_KEY,
    error_code,
    http_status,
    read_error_detail,
)

__all__ = ["HTTP_STATUS_BY_GRPC_CODE", "STATUS_DETAILS_KEY", "ObjectType", "error_code", "http_status",
           "read_error_detail"]
