"""limiter.v1: the native decision API (messages, client stub, servicer registration).

The message classes are built at import from the compiled ``limiter.proto``
(``descriptor.py``), so this package needs only protobuf and grpcio at runtime.
Clients use ``LimiterStub(channel)`` (sync or ``grpc.aio`` channels); servers call
``add_limiter_servicer(server, servicer)`` with an object defining async or sync
``Decide``, ``Release`` and ``Observe`` methods (on messages, or on encoded bytes for
those it lists in ``raw_methods``).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from limiter.server.v1.descriptor import SERIALIZED

FILE = descriptor_pool.Default().AddSerializedFile(SERIALIZED)
SERVICE_NAME = "limiter.v1.Limiter"
PROTO_NAME = FILE.name


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(FILE.message_types_by_name[name])


Check = _message("Check")
DecideRequest = _message("DecideRequest")
DecideResponse = _message("DecideResponse")
Result = _message("Result")
ReleaseRequest = _message("ReleaseRequest")
ReleaseResponse = _message("ReleaseResponse")
Observation = _message("Observation")
ObserveRequest = _message("ObserveRequest")
ObserveResponse = _message("ObserveResponse")
Priority = EnumTypeWrapper(FILE.enum_types_by_name["Priority"])

# method name -> (request class, response class)
METHODS = {
    "Decide": (DecideRequest, DecideResponse),
    "Release": (ReleaseRequest, ReleaseResponse),
    "Observe": (ObserveRequest, ObserveResponse),
}


class LimiterStub:
    """Client stub for ``limiter.v1.Limiter`` on a ``grpc`` or ``grpc.aio`` channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for name, (request, response) in METHODS.items():
            setattr(
                self,
                name,
                channel.unary_unary(
                    f"/{SERVICE_NAME}/{name}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString,
                ),
            )


def add_limiter_servicer(server: grpc.Server | grpc.aio.Server, servicer: Any) -> None:
    """Register ``servicer``'s Decide/Release/Observe on ``server``.

    Methods named in the servicer's ``raw_methods`` take and return encoded bytes.
    """
    raw = getattr(servicer, "raw_methods", frozenset())
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=None if name in raw else request.FromString,
            response_serializer=None if name in raw else response.SerializeToString,
        )
        for name, (request, response) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


__all__ = [
    "METHODS",
    "PROTO_NAME",
    "SERVICE_NAME",
    "Check",
    "DecideRequest",
    "DecideResponse",
    "LimiterStub",
    "Observation",
    "ObserveRequest",
    "ObserveResponse",
    "Priority",
    "ReleaseRequest",
    "ReleaseResponse",
    "Result",
    "add_limiter_servicer",
]
