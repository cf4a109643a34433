"""Who may reach the gRPC port: TLS (mutual with a client CA) and bearer-token authentication.

Tokens are compared in constant time. Health checks stay open so that load balancers and Kubernetes
probes need no secret; everything else (inference, model info, reflection) needs a token when a token
file is configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from weldstream.server.config import ServerConfig
from weldstream.server.errors import Unauthenticated, status_for

EXEMPT_PREFIX = "/grpc.health.v1.Health/"


def server_credentials(cfg: ServerConfig) -> grpc.ServerCredentials:
    """TLS with the configured certificate; with a client CA, clients must present a certificate it signed."""
    pair = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())
    client_ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """Accepted tokens, one a line (blank lines and # comments skipped); several allow rotation."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.startswith("#"))
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tokens


class BearerAuth(grpc.aio.ServerInterceptor):
    """Calls must carry `authorization: Bearer <token>` with an accepted token; else UNAUTHENTICATED."""

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        self._tokens = tokens

    def allows(self, metadata: tuple[tuple[str, Any], ...] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip().encode()
                # every token is compared, so the time taken says nothing about which one nearly matched
                return any([hmac.compare_digest(given, accepted) for accepted in self._tokens])
        return False

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIX) or self.allows(details.invocation_metadata):
            return handler
        return refusal(handler)


def refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without reading the request."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(*status_for(Unauthenticated("missing or wrong bearer token; send "
                                                        "'authorization: Bearer <token>'")))

    kinds = {"unary_unary": grpc.unary_unary_rpc_method_handler, "unary_stream": grpc.unary_stream_rpc_method_handler,
             "stream_unary": grpc.stream_unary_rpc_method_handler,
             "stream_stream": grpc.stream_stream_rpc_method_handler}
    kind = next(name for name in kinds if getattr(handler, name) is not None)
    return kinds[kind](refuse, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
