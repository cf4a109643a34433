"""The one place where exceptions become gRPC status codes, and where requests are counted and timed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from weldstream.errors import CorruptVersion, InvalidInput, ModelUnavailable, Overloaded
from weldstream.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[BaseException], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    CorruptVersion: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class NotFound(LookupError):
    """An unknown model name or version."""


STATUS_FOR[NotFound] = grpc.StatusCode.NOT_FOUND


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Known exceptions keep their message; anything else is INTERNAL with the details withheld."""
    for kind, code in STATUS_FOR.items():
        if isinstance(exc, kind):
            return code, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; see server logs"


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def unary(method: str) -> Callable[[Handler], Handler]:
    """Wrap a servicer's unary handler: count it, time it, track in-flight, map its errors to a status.

    The servicer keeps its ServerMetrics in `self.metrics`.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics: ServerMetrics = self.metrics
            started = time.perf_counter()
            metrics.inflight.inc()
            code = grpc.StatusCode.OK
            try:
                return await handler(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status below
                code, message = status_for(exc)
                await context.abort(code, message)
            finally:
                metrics.inflight.dec()
                metrics.requests.labels(method, code.name).inc()
                metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    return decorate
