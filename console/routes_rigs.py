"""The rigs page's API: per rig what the server's metrics said over the last week (see rig_watch)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from weldstream.console import rig_watch
from weldstream.console.accounts import Account
from weldstream.console.auth import require, services
from weldstream.console.rig_watch import KEEP_S, STATE, TABLES, ServerState, metrics_url
from weldstream.console.services import Services

router = APIRouter(prefix="/api/rigs", tags=["rigs"])
MAX_POINTS = 600  # a series longer than this is thinned to buckets of consecutive samples


@router.get("")
async def rigs(request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    """Per rig: scans served in the kept window, the latest interval's mean doubt, the drift now, drift events,
    the version served and what normalises its scans now; and whether the server's metrics answer."""
    svc = services(request)
    return {"server": _server(svc), "keep_s": KEEP_S, "rigs": await asyncio.to_thread(_summary, svc)}


@router.get("/{rig}")
async def rig(rig: str, request: Request, _: Annotated[Account, Depends(require("viewer"))],
              hours: Annotated[float, Query(gt=0, le=KEEP_S / 3600)] = 24.0) -> dict:
    """One rig's samples over the last ``hours`` (thinned to at most MAX_POINTS) and each drift event."""
    svc = services(request)
    rows = await asyncio.to_thread(_series, svc, rig, hours * 3600)
    if rows is None:
        raise HTTPException(404, f"no samples of rig {rig!r}")
    return {"rig": rig, "hours": hours, "samples": _thinned(rows, MAX_POINTS),
            "events": [{"at": r["at"], "count": r["events"], "version": r["version"]} for r in rows if r["events"]]}


def _server(svc: Services) -> dict[str, Any]:
    state = _state(svc)
    return {**{k: v for k, v in asdict(state).items() if k != "normalisation"}, "interval_s": rig_watch.INTERVAL_S}


def _state(svc: Services) -> ServerState:
    return svc.extras.get(STATE) or ServerState(metrics_url(svc.cfg))


def _summary(svc: Services) -> list[dict[str, Any]]:
    svc.registry.ensure_tables(TABLES)  # the watcher may not have run yet
    query = svc.registry.query
    totals = query("SELECT rig, SUM(scans), SUM(events), MIN(at), MAX(at) FROM rig_samples GROUP BY rig ORDER BY rig")
    latest = dict((rig, rest) for rig, *rest in query(
        "SELECT s.rig, s.drift, s.version FROM rig_samples s "
        "JOIN (SELECT rig, MAX(id) AS id FROM rig_samples GROUP BY rig) m ON s.id = m.id"))
    doubt = dict((rig, rest) for rig, *rest in query(
        "SELECT s.rig, s.doubt, s.at FROM rig_samples s JOIN (SELECT rig, MAX(id) AS id FROM rig_samples "
        "WHERE doubt IS NOT NULL GROUP BY rig) m ON s.id = m.id"))
    last_event = dict(query("SELECT rig, MAX(at) FROM rig_samples WHERE events > 0 GROUP BY rig"))
    normalisation = _state(svc).normalisation
    found = []
    for rig, scans, events, first, last in totals:
        drift, version = latest.get(rig, (None, None))
        mean_doubt, doubt_at = doubt.get(rig, (None, None))
        found.append({"rig": rig, "scans": int(scans or 0), "drift_events": int(events or 0), "drift": drift,
                      "doubt": mean_doubt, "doubt_at": doubt_at, "version": version, "first_at": first,
                      "last_at": last, "last_event_at": last_event.get(rig),
                      "normalisation": normalisation.get(rig)})
    return found


def _series(svc: Services, rig: str, span_s: float) -> list[dict[str, Any]] | None:
    svc.registry.ensure_tables(TABLES)
    if not svc.registry.query("SELECT 1 FROM rig_samples WHERE rig = ? LIMIT 1", (rig,)):
        return None
    rows = svc.registry.query("SELECT at, scans, doubt, drift, events, version FROM rig_samples WHERE rig = ? AND "
                              "at >= ? ORDER BY at, id", (rig, time.time() - span_s))
    return [{"at": at, "scans": int(scans), "doubt": doubt, "drift": drift, "events": int(events), "version": version}
            for at, scans, doubt, drift, events, version in rows]


def _thinned(rows: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """Buckets of consecutive samples: their scans and events summed, doubt weighted by scans, the last drift."""
    if len(rows) <= most:
        return rows
    size = -(-len(rows) // most)
    thinned = []
    for start in range(0, len(rows), size):
        bucket = rows[start:start + size]
        scans = sum(r["scans"] for r in bucket)
        doubted = [(r["doubt"], r["scans"]) for r in bucket if r["doubt"] is not None and r["scans"]]
        weight = sum(n for _, n in doubted)
        thinned.append({**bucket[-1], "scans": scans, "events": sum(r["events"] for r in bucket),
                        "doubt": sum(d * n for d, n in doubted) / weight if weight else None})
    return thinned
