"""The models page's API: versions and their scores, what is served and by whom, refused rounds, operator
actions; pin, unpin and roll back through `weldstream models`' own ``Operator``; consolidation jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from weldstream.console.accounts import Account
from weldstream.console.auth import require, services
from weldstream.console.consolidation_jobs import (
    ConsolidationRequest,
    live_jobs,
    read_job,
    recent_jobs,
    start_job,
)
from weldstream.console.services import Services
from weldstream.errors import CorruptVersion
from weldstream.pinning import Change, Operator, OperatorConfig
from weldstream.registry import Round, VersionRow
from weldstream.s3_client import StoreUnavailable
from weldstream.stores import VersionStore, configured_store

router = APIRouter(prefix="/api", tags=["models"])
REFUSED_SHOWN = 50
ACTIONS_SHOWN = 50
STORE = "store"  # the key of Services.extras


class Pin(BaseModel):
    version: int = Field(ge=0)
    reason: str = Field("", max_length=500)


class Unpin(BaseModel):
    reason: str = Field("", max_length=500)


class Rollback(BaseModel):
    version: int | None = Field(None, ge=0, description="the version to go back to (default: the served one's parent)")
    reason: str = Field("", max_length=500)


class Cancel(BaseModel):
    reason: str = Field("", max_length=500)


def store_of(svc: Services) -> VersionStore:
    """The console's weight store, opened once (an s3:// store keeps a client)."""
    if STORE not in svc.extras:
        svc.extras[STORE] = configured_store(svc.cfg.store, svc.cfg.model_dir)
    return svc.extras[STORE]


async def _with_store(svc: Services, read: Callable[[Services, VersionStore], dict]) -> dict:
    """Run a read that touches the store on a thread; an unreachable store is a 503 naming it."""
    try:
        return await asyncio.to_thread(lambda: read(svc, store_of(svc)))
    except (StoreUnavailable, OSError) as exc:
        raise HTTPException(503, f"the weight store does not answer ({type(exc).__name__}: {exc})") from None


@router.get("/models")
async def models(request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    """Every version with its scores, what is served and pinned, each replica's version, refused rounds and
    the latest operator actions."""
    return await _with_store(services(request), _overview)


def _overview(svc: Services, store: VersionStore) -> dict:
    registry = svc.registry
    registry.sync(store)
    served, pinned = store.served(), store.pinned()
    rounds = registry.rounds(limit=REFUSED_SHOWN * 4)
    return {
        "served": served, "pinned": pinned, "latest": store.latest(), "store": str(store.root),
        "versions": [_version(v, served, pinned) for v in registry.versions()],
        "replicas": sorted(({"server": s.server, "version": s.version, "since": s.since}
                            for s in registry.serving() if s.until is None), key=lambda r: r["server"]),
        "refused": [_round(r) for r in rounds if r.outcome == "refused"][:REFUSED_SHOWN],
        "actions": [asdict(a) for a in registry.actions(limit=ACTIONS_SHOWN)],
    }


@router.get("/models/{version}")
async def model(version: int, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    """One version: its manifest, scores, lineage back to a root, its training rounds, who served it when."""
    found = await _with_store(services(request), lambda svc, store: _detail(svc, store, version))
    if not found:
        raise HTTPException(404, f"no version {version}")
    return found


def _detail(svc: Services, store: VersionStore, version: int) -> dict:
    registry = svc.registry
    registry.sync(store)
    row = registry.version(version)
    if row is None:
        return {}
    served, pinned = store.served(), store.pinned()
    return {**_version(row, served, pinned), "manifest": asdict(row.manifest), "lineage": registry.lineage(version),
            "rounds": [_round(r) for r in registry.rounds(version=version)],
            "serving": [asdict(s) for s in registry.serving(version=version)]}


def _version(v: VersionRow, served: int | None, pinned: int | None) -> dict[str, Any]:
    return {"version": v.version, "parent": v.parent_version, "strategy": v.strategy, "created_at": v.created_at,
            "sha256": v.sha256, "scores": v.manifest.scores, "served": v.version == served,
            "pinned": v.version == pinned}


def _round(r: Round) -> dict[str, Any]:
    return {k: v for k, v in asdict(r).items() if k != "offsets"}


# -- an operator's hold on what is served
@router.post("/models/pin")
async def pin(body: Pin, request: Request, account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """Hold every server on a version (its checksum verified first) until unpinned."""
    return await _operate(services(request), account, "pin", lambda op: op.pin(body.version, body.reason))


@router.post("/models/unpin")
async def unpin(body: Unpin, request: Request, account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """Servers follow the newest version again."""
    return await _operate(services(request), account, "unpin", lambda op: op.unpin(body.reason))


@router.post("/models/rollback")
async def rollback(body: Rollback, request: Request,
                   account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """Pin the given version, or the parent of the one served now."""
    return await _operate(services(request), account, "rollback", lambda op: op.rollback(body.version, body.reason))


async def _operate(svc: Services, account: Account, action: str, change: Callable[[Operator], Any]) -> dict:
    """The change through ``Operator``, exactly as `weldstream models` makes it (recorded in the registry with
    ``console:NAME`` as its actor, announced on weld.models), on a thread: loading a version to check it
    takes a moment."""
    cfg = svc.cfg
    actor = f"console:{account.name}"
    operator_cfg = OperatorConfig(model_dir=cfg.model_dir, store=cfg.store, registry=cfg.registry, kafka=cfg.kafka,
                                  models_topic=cfg.models_topic, actor=actor, kafka_security=cfg.kafka_security)

    def run() -> Change:
        store = store_of(svc)
        return asyncio.run(change(Operator(operator_cfg, store, svc.registry, actor)))

    try:
        done = await asyncio.to_thread(run)
    except CorruptVersion as exc:
        raise HTTPException(409, f"{action} refused: {exc}") from None
    except (ValueError, FileNotFoundError) as exc:
        raise HTTPException(400, f"{action} refused: {exc}") from None
    except (StoreUnavailable, OSError) as exc:
        raise HTTPException(503, f"the weight store does not answer ({type(exc).__name__}: {exc}); nothing "
                                 "changed") from None
    except KafkaError as exc:  # the store and the registry changed; only the announcement is missing
        served = await asyncio.to_thread(lambda: store_of(svc).served())
        return {"action": action, "served_before": None, "served_now": served, "announced": False,
                "warning": f"done, but not announced on {cfg.models_topic} ({type(exc).__name__}: {exc}): servers "
                           "follow at their next store poll"}
    return {"action": done.action, "served_before": done.served_before, "served_now": done.served_now,
            "announced": bool(cfg.kafka),
            "warning": "" if cfg.kafka else "the console has no Kafka: servers follow at their next store poll"}


# -- consolidation jobs
@router.post("/consolidations")
async def start_consolidation(body: ConsolidationRequest, request: Request,
                              account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """Run `weldstream consolidate` in the background with the console's store, registry and Kafka."""
    svc = services(request)
    try:
        job = await start_job(svc, account.name, body)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    except RuntimeError as exc:
        raise HTTPException(409, str(exc)) from None
    settings = job.settings
    svc.record_action("consolidate", account.name, f"job {job.id}: {settings.strategy} over "
                                                   f"{settings.data or 'the labeled topic'}, {settings.epochs} epochs")
    return {"job": job.id}


@router.get("/consolidations")
async def consolidations(request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    return {"jobs": await asyncio.to_thread(recent_jobs, services(request))}


@router.get("/consolidations/{job_id}")
async def consolidation(job_id: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    found = await asyncio.to_thread(read_job, services(request), job_id)
    if found is None:
        raise HTTPException(404, f"no consolidation job {job_id}")
    return found


@router.post("/consolidations/{job_id}/cancel")
async def cancel_consolidation(job_id: str, request: Request, account: Annotated[Account, Depends(require("operator"))],
                               body: Cancel | None = None) -> dict:
    """Stop the job (its progress is saved: the same job started again resumes); answers once it ended."""
    svc = services(request)
    job = live_jobs(svc).get(job_id)
    if job is None or not job.live:
        found = await asyncio.to_thread(read_job, svc, job_id)
        if found is None:
            raise HTTPException(404, f"no consolidation job {job_id}")
        raise HTTPException(409, f"consolidation job {job_id} is {found['state']}, not running")
    reason = (body.reason if body else "") or f"cancelled by {account.name}"
    svc.record_action("cancel consolidation", account.name, f"job {job_id}: {reason}")
    await job.cancel(reason)
    for _ in range(100):  # the job's own task writes its end as soon as the process is gone
        if not job.live:
            break
        await asyncio.sleep(0.05)
    return await asyncio.to_thread(read_job, svc, job_id) or {}
