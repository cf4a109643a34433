"""Request metrics from the status a call really ended with, seen by a server interceptor.

A handler that returns is not yet an OK: the response may still fail to send, or the client may have
cancelled or run out of time. The status is read when the call is done (`add_done_callback`), from the
code the handler or the mapping in errors.py set, and CANCELLED when the call was cancelled.

SegmentStream is counted per frame, in-band, by its servicer; interceptors see only whole calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from weldstream.server.metrics import METHODS, ServerMetrics


def unary_inference_method(handler: Any, details: grpc.HandlerCallDetails) -> str | None:
    """The method name of a unary inference call (one of METHODS); None for anything else (health,
    reflection, streams), which these interceptors leave as it is."""
    method = details.method.rsplit("/", 1)[-1]
    if handler is None or handler.unary_unary is None or method not in METHODS:
        return None
    return method


def with_behaviour(handler: Any, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Any:
    """``handler`` with its unary behaviour replaced (the wrapper calls the original)."""
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


class RequestMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = unary_inference_method(handler, details)
        if method is None:
            return handler
        behaviour = handler.unary_unary
        metrics = self._metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.inflight.inc()
            outcome: dict[str, grpc.StatusCode] = {}

            def finished(_: object) -> None:
                metrics.inflight.dec()
                code = grpc.StatusCode.CANCELLED if context.cancelled() else final_code(context, outcome)
                metrics.requests.labels(method, code.name).inc()
                metrics.request_seconds.labels(method).observe(time.perf_counter() - started)

            context.add_done_callback(finished)
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                outcome["raised"] = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                outcome["raised"] = grpc.StatusCode.UNKNOWN
                raise

        return with_behaviour(handler, observed)


def final_code(context: grpc.aio.ServicerContext, outcome: dict[str, grpc.StatusCode]) -> grpc.StatusCode:
    """The code set on the call (by abort or set_code); OK if none was and the handler returned."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return outcome.get("raised", grpc.StatusCode.OK)
