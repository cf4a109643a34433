"""The review queue: scans the servers doubted, waiting for an inspector, kept in the registry's database.

Each item's state moves queued -> claimed -> submitting -> labeled | rejected by conditional updates, so
two inspectors (or two browser tabs, or a script and a person) cannot both win an item: a claim holds
for a lease, a second submit finds the item no longer claimable and is refused. The scan itself (the
``ReviewScan`` as the server published it) lies in the console's data folder, named by a digest of its
scan id so that no id can name a path.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weldstream.codec import decode_image
from weldstream.registry import Registry
from weldstream.v1 import stream_pb2

_COLUMNS = ("scan_id, rig_id, domain, doubt, drift, version, reasons, regions, width, height, captured_at, "
            "queued_at, state, claimed_by, lease_until, finished_by, finished_at, labeled_domain, reason")
# Who may take an item: nobody holds it, its holder's lease ran out, or it is the caller's own.
_TAKEABLE = "(state = 'queued' OR (state = 'claimed' AND (lease_until < ? OR claimed_by = ?)))"


class Refused(Exception):
    """An item cannot be taken or finished; ``status`` is the HTTP status that says why (404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    scan_id: str
    rig_id: str
    domain: str
    doubt: float
    drift: float
    version: int
    reasons: list[str]
    regions: list[dict[str, Any]]
    width: int
    height: int
    captured_at: float
    queued_at: float
    state: str
    claimed_by: str | None
    lease_until: float | None
    finished_by: str | None
    finished_at: float | None
    labeled_domain: str | None
    reason: str | None

    def summary(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "rig_id": self.rig_id, "domain": self.domain, "doubt": self.doubt,
                "version": self.version, "reasons": self.reasons}

    def detail(self) -> dict[str, Any]:
        return {**self.summary(), "drift": self.drift, "regions": self.regions, "width": self.width,
                "height": self.height, "captured_at": self.captured_at, "state": self.state,
                "claimed_by": self.claimed_by, "lease_until": self.lease_until, "finished_by": self.finished_by}


def _item(row: tuple) -> Item:
    values = list(row)
    values[6], values[7] = json.loads(values[6]), json.loads(values[7])
    return Item(*values)


def _regions(scan: stream_pb2.ReviewScan) -> list[dict[str, Any]]:
    return [{"class_id": r.class_id, "class_name": r.class_name, "doubt": round(r.doubt, 4),
             "area_px": r.area_px, "mean_confidence": round(r.mean_confidence, 4),
             "bbox": [r.bbox.x, r.bbox.y, r.bbox.width, r.bbox.height]} for r in scan.regions]


class ReviewQueue:
    def __init__(self, registry: Registry, folder: Path) -> None:
        self.registry = registry
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, scan_id: str) -> Path:
        return self.folder / f"{hashlib.sha256(scan_id.encode()).hexdigest()}.pb"

    def add(self, scan: stream_pb2.ReviewScan) -> bool:
        """Queue a scan (its file first, then its row); False when it is already known (a redelivery)."""
        if self.registry.query("SELECT 1 FROM review_items WHERE scan_id = ?", (scan.scan_id,)):
            return False
        height, width = decode_image(scan.image).shape[-2:]
        path = self._path(scan.scan_id)
        partial = path.with_suffix(".part")
        partial.write_bytes(scan.SerializeToString())
        partial.replace(path)
        captured = scan.captured_at.ToNanoseconds() / 1e9 if scan.HasField("captured_at") else time.time()
        return bool(self.registry.execute(
            f"INSERT INTO review_items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', "
            "NULL, NULL, NULL, NULL, NULL, NULL) ON CONFLICT (scan_id) DO NOTHING",
            (scan.scan_id, scan.rig_id, scan.domain, float(scan.doubt), float(scan.drift), int(scan.model_version),
             json.dumps(list(scan.reasons)), json.dumps(_regions(scan)), int(width), int(height), captured,
             time.time())))

    def get(self, scan_id: str) -> Item:
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM review_items WHERE scan_id = ?", (scan_id,))
        if not rows:
            raise Refused(404, f"scan {scan_id!r} is not in the review queue")
        return _item(rows[0])

    def scan(self, scan_id: str) -> stream_pb2.ReviewScan:
        self.get(scan_id)  # 404 for an unknown id before any file is touched
        message = stream_pb2.ReviewScan()
        message.ParseFromString(self._path(scan_id).read_bytes())
        return message

    def offered(self, account: str, limit: int = 50, rig: str = "", domain: str = "") -> list[Item]:
        """Items this account may take, most doubtful first (another's live claim hides an item)."""
        where, params = [_TAKEABLE], [time.time(), account]
        if rig:
            where.append("rig_id = ?")
            params.append(rig)
        if domain:
            where.append("domain = ?")
            params.append(domain)
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM review_items WHERE {' AND '.join(where)} "
                                   f"ORDER BY doubt DESC, queued_at LIMIT {max(1, min(int(limit), 1000))}", params)
        return [_item(row) for row in rows]

    def counts(self) -> dict[str, int]:
        return {state: int(n) for state, n in
                self.registry.query("SELECT state, COUNT(*) FROM review_items GROUP BY state")}

    def facets(self) -> dict[str, list[str]]:
        """The rigs and domains of waiting items, for the queue's filters."""
        rows = self.registry.query("SELECT DISTINCT rig_id, domain FROM review_items WHERE state IN "
                                   "('queued', 'claimed')")
        return {"rigs": sorted({r for r, _ in rows}), "domains": sorted({d for _, d in rows})}

    def finished(self, limit: int = 50) -> list[Item]:
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM review_items WHERE state IN ('labeled', 'rejected') "
                                   f"ORDER BY finished_at DESC LIMIT {max(1, min(int(limit), 1000))}")
        return [_item(row) for row in rows]

    def claim(self, scan_id: str, account: str, lease_s: float) -> float:
        """Hold an item for ``lease_s``; returns the lease's end. Refused (409) while another holds it."""
        now = time.time()
        until = now + lease_s
        if self.registry.execute(f"UPDATE review_items SET state = 'claimed', claimed_by = ?, lease_until = ? "
                                 f"WHERE scan_id = ? AND {_TAKEABLE}", (account, until, scan_id, now, account)):
            return until
        raise self._why_not(scan_id)

    def begin(self, scan_id: str, account: str) -> Item:
        """Take an item for a label or a rejection (claimed or not, if nobody else holds it)."""
        now = time.time()
        if self.registry.execute(f"UPDATE review_items SET state = 'submitting', claimed_by = ?, lease_until = ? "
                                 f"WHERE scan_id = ? AND {_TAKEABLE}", (account, now, scan_id, now, account)):
            return self.get(scan_id)
        raise self._why_not(scan_id)

    def finish(self, scan_id: str, account: str, state: str, labeled_domain: str = "", reason: str = "") -> None:
        self.registry.execute("UPDATE review_items SET state = ?, finished_by = ?, finished_at = ?, "
                              "labeled_domain = ?, reason = ? WHERE scan_id = ? AND state = 'submitting'",
                              (state, account, time.time(), labeled_domain or None, reason or None, scan_id))

    def give_back(self, scan_id: str, account: str, lease_s: float) -> None:
        """A submit that failed (Kafka down): the item goes back to its inspector's claim."""
        self.registry.execute("UPDATE review_items SET state = 'claimed', lease_until = ? WHERE scan_id = ? "
                              "AND state = 'submitting' AND claimed_by = ?", (time.time() + lease_s, scan_id, account))

    def recover(self) -> int:
        """At start: submits cut off by a stop go back to the queue (their label was never acknowledged)."""
        return self.registry.execute("UPDATE review_items SET state = 'queued', claimed_by = NULL, "
                                     "lease_until = NULL WHERE state = 'submitting'")

    def last_domain(self, rig_id: str) -> str | None:
        rows = self.registry.query("SELECT labeled_domain FROM review_items WHERE rig_id = ? AND state = 'labeled' "
                                   "ORDER BY finished_at DESC LIMIT 1", (rig_id,))
        return rows[0][0] if rows else None

    def _why_not(self, scan_id: str) -> Refused:
        item = self.get(scan_id)
        if item.state in ("labeled", "rejected"):
            return Refused(409, f"scan {scan_id!r} was already {item.state} by {item.finished_by}")
        if item.state == "submitting":
            return Refused(409, f"scan {scan_id!r} is being submitted by {item.claimed_by}")
        return Refused(409, f"scan {scan_id!r} is claimed by {item.claimed_by} until "
                            f"{time.strftime('%H:%M:%S', time.localtime(item.lease_until or 0))}")
