"""The console's web application: the JSON API under /api and the pages that use it, from one process.

Started by ``run_console`` (uvicorn) or built by ``create_app`` for tests. At start it opens the
database, the Kafka producer and the review feed; a Kafka or server outage leaves the pages up and says
so on the request that needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from weldstream.console import routes_label_studio, routes_review, routes_session
from weldstream.console.config import ConsoleConfig
from weldstream.console.kafka_io import ReviewFeed, open_producer
from weldstream.console.rig_watch import watch_rigs
from weldstream.console.routes_datasets import router as datasets_router
from weldstream.console.routes_models import router as models_router
from weldstream.console.routes_rigs import router as rigs_router
from weldstream.console.routes_segment import router as segment_router
from weldstream.console.services import Services, open_services
from weldstream.topics import ensure_topics

log = logging.getLogger(__name__)
STATIC = resources.files("weldstream.console") / "static"
PAGES = ("login", "review", "try", "datasets", "models", "rigs")
# The pages load nothing but the console's own files: no CDN, no inline script, no framing by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc: Services = app.state.services
    cfg = svc.cfg
    if cfg.kafka:
        try:
            await ensure_topics(cfg.kafka, security=cfg.kafka_security)
        except Exception as exc:  # a broker down at start: the feed retries, labels say so per request
            log.warning("could not check Kafka topics at %s (%s)", cfg.kafka, exc)
        svc.producer = open_producer(cfg)
        await svc.producer.start()
        svc.tasks.append(asyncio.create_task(ReviewFeed(cfg, svc.queue, svc.producer).run(), name="review-feed"))
    svc.tasks.append(asyncio.create_task(watch_rigs(svc), name="rig-watch"))
    try:
        yield
    finally:
        for task in svc.tasks:
            task.cancel()
        await asyncio.gather(*svc.tasks, return_exceptions=True)
        if svc.producer is not None:
            await svc.producer.stop()
        if svc.channel is not None:
            await svc.channel.close()
        svc.registry.close()


def create_app(cfg: ConsoleConfig, svc: Services | None = None) -> FastAPI:
    # FastAPI's /docs and /redoc pages load their scripts from a CDN; /openapi.json is the API's contract.
    app = FastAPI(title="weldstream console", summary="Review station, scans, datasets, models and rigs",
                  lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.services = svc or open_services(cfg)
    app.include_router(routes_session.router)
    app.include_router(routes_review.router)
    app.include_router(routes_label_studio.router)
    app.include_router(models_router)
    app.include_router(rigs_router)
    app.include_router(datasets_router)
    app.include_router(segment_router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/review")

    @app.get("/{page}", include_in_schema=False)
    async def page(page: str) -> FileResponse:
        if page not in PAGES:
            raise HTTPException(404, f"no page {page!r}")
        return FileResponse(str(STATIC / f"{page}.html"), headers={"Cache-Control": "no-cache"})

    return app


def run_console(cfg: ConsoleConfig) -> None:
    import uvicorn

    scheme = "https" if cfg.tls_certfile else "http"
    log.info("console on %s://%s:%d", scheme, cfg.http_host, cfg.http_port)
    uvicorn.run(create_app(cfg), host=cfg.http_host, port=cfg.http_port, log_level="info",
                ssl_certfile=str(cfg.tls_certfile) if cfg.tls_certfile else None,
                ssl_keyfile=str(cfg.tls_keyfile) if cfg.tls_keyfile else None, proxy_headers=True)
