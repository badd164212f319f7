"""What a failed gRPC call means to a caller: its HTTP status and error code, and the rich status
(`fabula.common.v1.ErrorDetail`, `google.rpc.RetryInfo`) the services attach to it.

The gateway answers HTTP clients with these statuses and the SDK's gRPC transport raises the same
errors from them, so a client sees one behaviour whichever way it talks to the server.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from fabula.common.v1 import errors_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailing metadata key that carries a serialized `google.rpc.Status`."""

HTTP_STATUS_BY_GRPC_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # 499 is the de-facto "client closed request" status; the client rarely sees it.
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""Every code a caller can act on; the rest (INTERNAL, UNKNOWN, DATA_LOSS) are server faults: 500."""

INTERNAL_STATUS = 500


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_GRPC_CODE.get(code, INTERNAL_STATUS)


def error_code(code: grpc.StatusCode) -> str:
    """The error's code as clients see it: the gRPC code's name, and "INTERNAL" for every server
    fault, so that what kind of fault it was does not leak."""
    return "INTERNAL" if http_status(code) == INTERNAL_STATUS else code.name


def read_error_detail(error: grpc.aio.AioRpcError | grpc.RpcError) -> tuple[errors_pb2.ErrorDetail, float | None]:
    """The ErrorDetail (empty when none came) and the retry delay in seconds (None when none came)
    that a failed call carried in its rich status."""
    detail = errors_pb2.ErrorDetail()
    retry_after: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            if packed.Is(errors_pb2.ErrorDetail.DESCRIPTOR):
                packed.Unpack(detail)
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                packed.Unpack(info)
                retry_after = info.retry_delay.ToMilliseconds() / 1000
    return detail, retry_after
