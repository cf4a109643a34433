"""The one place where exceptions become gRPC status codes (requests are counted by interceptors.py)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from weldstream.errors import CorruptVersion, InvalidInput, ModelUnavailable, Overloaded

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    CorruptVersion: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class NotFound(LookupError):
    """An unknown model name or version."""


class DeadlineExpired(TimeoutError):
    """The caller's deadline passed while the request waited; it is dropped before its forward pass."""


class Unauthenticated(PermissionError):
    """A call without an accepted bearer token."""


class ResponseTooLarge(RuntimeError):
    """A response larger than the server's send limit (it could not reach the client)."""


STATUS_FOR[NotFound] = grpc.StatusCode.NOT_FOUND
STATUS_FOR[DeadlineExpired] = grpc.StatusCode.DEADLINE_EXCEEDED
STATUS_FOR[ResponseTooLarge] = grpc.StatusCode.RESOURCE_EXHAUSTED
STATUS_FOR[Unauthenticated] = grpc.StatusCode.UNAUTHENTICATED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Known exceptions keep their message; anything else is INTERNAL with the details withheld."""
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see server logs"


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def unary(handler: Handler) -> Handler:
    """Wrap a servicer's unary handler: map its errors to a status, and refuse a response that could not
    be sent (over the send limit) with RESOURCE_EXHAUSTED instead of letting gRPC fail it after an OK.

    The servicer keeps its send limit in `self.max_send_bytes`.
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await handler(self, request, context)
            if response.ByteSize() > self.max_send_bytes:
                raise ResponseTooLarge(f"the response has {response.ByteSize()} bytes; the send limit is "
                                       f"{self.max_send_bytes} (ask for fewer outputs or a smaller scan)")
            return response
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            code, message = status_for(exc)
            await context.abort(code, message)

    return wrapper  # type: ignore[return-value]
