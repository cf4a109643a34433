"""Graceful shutdown that loses no answered call.

grpc's own ``stop(grace)`` closes each connection the moment its last call is done. When the client's
unread frames are still in the server's receive buffer, that close is a TCP reset, and a reset makes
the client discard an answer it had not read yet: a call the server finished fails with UNAVAILABLE
("Connection reset by peer"). So the server drains first: new inference calls are refused, the calls
in flight finish, and the last answers get a moment to be read before grpc closes the connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from weldstream.server.interceptors import unary_inference_method, with_behaviour

LINGER_S = 0.2  # after the last answer, before the connections close


class Drain(grpc.aio.ServerInterceptor):
    """Counts inference calls in flight, and refuses new ones once draining (health keeps answering)."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.last_done = 0.0

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if unary_inference_method(handler, details) is None:
            return handler
        behaviour = handler.unary_unary

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            self.in_flight += 1
            try:
                return await behaviour(request, context)
            finally:
                self.in_flight -= 1
                self.last_done = time.monotonic()

        return with_behaviour(handler, counted)

    async def drain(self, timeout_s: float) -> float:
        """Refuse new calls, wait for those in flight (at most ``timeout_s``), let the last answers be
        read; returns the seconds of ``timeout_s`` left."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        linger = min(self.last_done + LINGER_S, deadline) - time.monotonic()
        if linger > 0:
            await asyncio.sleep(linger)
        return max(0.0, deadline - time.monotonic())
