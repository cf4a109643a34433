"""The metrics port: Prometheus /metrics, plus /healthz answered by the process's own liveness check.

prometheus_client's start_http_server answers from its own thread whatever the process is doing, so it
cannot say whether the work loop is stuck; /healthz asks a function the loop keeps true by making progress.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler


def start_metrics_server(port: int, host: str, registry: CollectorRegistry,
                         live: Callable[[], bool] | None = None) -> WSGIServer:
    """Serve /metrics (and /healthz when `live` is given) on a daemon thread; `.shutdown()` stops it."""
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if live is None or environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        ok = bool(live())
        body = json.dumps({"live": ok}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
