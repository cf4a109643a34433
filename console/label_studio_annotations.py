"""Label Studio annotations -> LabeledScans on `weld.scans.labeled`, exactly once per annotation revision.

A revision is an annotation id with its ``updated_at``: a webhook delivered twice, or a webhook and a
``sync`` poll that both see it, produce one record; an updated annotation is a new revision and a new
record for the same scan id (the learner's window keeps the latest). Each revision is claimed in the
registry's database ('sending') before it is produced and marked 'sent' once Kafka acknowledged it; a
failed send drops the claim, so Label Studio's next delivery or the next ``sync`` sends it again. A claim
left by a process stopped mid-send is taken over after ``STALE_S``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from weldstream.console.label_studio_brush import results_to_mask
from weldstream.console.label_studio_config import LABEL_STUDIO_ACCOUNT
from weldstream.console.labeled_scans import labeled_scan, pixels_changed, send_labeled
from weldstream.console.review_queue import Refused
from weldstream.console.services import Services
from weldstream.errors import InvalidInput

TABLES = (
    """CREATE TABLE IF NOT EXISTS label_studio_revisions (
        annotation_id BIGINT NOT NULL, updated_at TEXT NOT NULL, scan_id TEXT NOT NULL, task_id BIGINT NOT NULL,
        state TEXT NOT NULL, labeled_by TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        sent_at DOUBLE PRECISION, kafka_partition BIGINT, kafka_offset BIGINT,
        PRIMARY KEY (annotation_id, updated_at))""",
    """CREATE TABLE IF NOT EXISTS label_studio_tasks (
        scan_id TEXT PRIMARY KEY, project_id BIGINT NOT NULL, task_id BIGINT NOT NULL,
        prelabel_version BIGINT NOT NULL, pushed_at DOUBLE PRECISION NOT NULL)""",
)
STALE_S = 120.0
SEND_TIMEOUT_S = 20.0


class Busy(Exception):
    """Another delivery of the same revision is being sent right now (HTTP 409: try again)."""


class NotSent(Exception):
    """Kafka did not acknowledge the record (HTTP 503: Label Studio or ``sync`` delivers it again)."""


@dataclass(frozen=True)
class Revision:
    annotation_id: int
    updated_at: str
    task_id: int
    scan_id: str
    domain: str
    labeled_by: str
    result: list[Any]
    cancelled: bool

    @classmethod
    def parse(cls, annotation: Any, task: Any) -> Revision:
        """An annotation and its task as Label Studio sends them (webhook or export); InvalidInput names what
        is missing."""
        if not isinstance(annotation, dict):
            raise InvalidInput("annotation", "is missing")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InvalidInput("task.data", "is missing")
        data = task["data"]
        scan_id = data.get("scan_id")
        if not isinstance(scan_id, str) or not scan_id:
            raise InvalidInput("task.data.scan_id", "is missing: the task was not pushed by `weldstream label-studio "
                                                    "push`")
        for key in ("id", "updated_at"):
            if annotation.get(key) in (None, ""):
                raise InvalidInput(f"annotation.{key}", "is missing")
        if not isinstance(annotation.get("result"), list):
            raise InvalidInput("annotation.result", "is missing or not a list")
        task_id = annotation.get("task", task.get("id"))
        return cls(annotation_id=int(annotation["id"]), updated_at=str(annotation["updated_at"]),
                   task_id=int(task_id) if isinstance(task_id, int | str) and str(task_id).isdigit() else 0,
                   scan_id=scan_id, domain=str(data.get("domain") or ""),
                   labeled_by=labeled_by(annotation.get("completed_by")), result=annotation["result"],
                   cancelled=bool(annotation.get("was_cancelled")))


def labeled_by(completed_by: Any) -> str:
    """Label Studio's ``completed_by`` (a user id, or a user object in exports) as a LabeledScan's labeled_by."""
    if isinstance(completed_by, dict):
        who = completed_by.get("email") or completed_by.get("username") or f"user-{completed_by.get('id')}"
    else:
        who = f"user-{completed_by}"
    return f"label-studio:{who}"


class Revisions:
    """Sends revisions through ``svc.producer`` and keeps their state beside the review queue."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        svc.registry.ensure_tables(TABLES)

    def state(self, annotation_id: int, updated_at: str) -> str | None:
        rows = self.svc.registry.query("SELECT state FROM label_studio_revisions WHERE annotation_id = ? AND "
                                       "updated_at = ?", (annotation_id, updated_at))
        return rows[0][0] if rows else None

    async def take(self, rev: Revision) -> dict[str, Any]:
        """Send one revision unless it was sent; returns what happened. Raises InvalidInput (bad payload),
        Refused (unknown scan), Busy or NotSent."""
        answer = {"annotation_id": rev.annotation_id, "updated_at": rev.updated_at, "scan_id": rev.scan_id}
        if rev.cancelled:
            return {**answer, "status": "skipped (the annotator skipped the task)"}
        if self.state(rev.annotation_id, rev.updated_at) == "sent":
            return {**answer, "status": "duplicate (already on Kafka)"}
        queue = self.svc.queue
        item = queue.get(rev.scan_id)  # Refused(404) for a scan the console never queued
        mask = await asyncio.to_thread(results_to_mask, rev.result, item.height, item.width)
        self._claim(rev)
        try:
            scan = queue.scan(rev.scan_id)
            domain = rev.domain or scan.domain or queue.last_domain(scan.rig_id) or scan.rig_id
            message = labeled_scan(scan, mask, domain, rev.labeled_by, self.prelabel_version(rev.scan_id))
            if self.svc.producer is None:
                raise NotSent("the console has no Kafka connection (--kafka '') and cannot send labels")
            try:
                sent = await send_labeled(self.svc.producer, self.svc.cfg.labeled_topic, message, SEND_TIMEOUT_S)
            except Exception as exc:
                raise NotSent(f"Kafka did not acknowledge the label ({type(exc).__name__}: {exc})") from None
        except BaseException:
            self._release(rev)
            raise
        self.svc.registry.execute(
            "UPDATE label_studio_revisions SET state = 'sent', sent_at = ?, kafka_partition = ?, kafka_offset = ? "
            "WHERE annotation_id = ? AND updated_at = ?",
            (time.time(), sent.partition, sent.offset, rev.annotation_id, rev.updated_at))
        self._finish_item(rev, domain)
        changed = pixels_changed(scan, mask)
        self.svc.registry.record_action(
            "label", message.prelabel_version or None, None, rev.labeled_by,
            f"scan {rev.scan_id} domain {domain}: annotation {rev.annotation_id} of Label Studio task {rev.task_id} "
            f"({rev.updated_at}), {changed} px changed from the served mask")
        return {**answer, "status": "sent", "domain": domain, "labeled_by": rev.labeled_by,
                "prelabel_version": message.prelabel_version, "pixels_changed": changed,
                "partition": sent.partition, "offset": sent.offset}

    def forget(self, annotation_ids: list[int]) -> dict[str, Any]:
        """Annotations deleted in Label Studio: recorded as operator actions. What they sent stays on Kafka (the
        learner has it); a new annotation of the same scan replaces it in the learner's window."""
        for annotation_id in annotation_ids:
            rows = self.svc.registry.query("SELECT DISTINCT scan_id FROM label_studio_revisions WHERE "
                                           "annotation_id = ?", (annotation_id,))
            scans = ", ".join(r[0] for r in rows) or "no scan sent"
            self.svc.registry.record_action("label-studio-delete", None, None, "label-studio",
                                            f"annotation {annotation_id} deleted in Label Studio ({scans}); "
                                            "its labeled scans stay on the labeled topic")
        return {"status": "recorded", "deleted": annotation_ids}

    def record_push(self, scan_id: str, project_id: int, task_id: int, version: int) -> None:
        self.svc.registry.execute(
            "INSERT INTO label_studio_tasks (scan_id, project_id, task_id, prelabel_version, pushed_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scan_id) DO NOTHING", (scan_id, project_id, task_id, version,
                                                                        time.time()))

    def pushed(self) -> set[str]:
        return {r[0] for r in self.svc.registry.query("SELECT scan_id FROM label_studio_tasks")}

    def predicted(self, scan_id: str, version: int) -> None:
        """The ML backend answered for this scan with ``version``: the pre-label an annotator now starts from."""
        self.svc.registry.execute("UPDATE label_studio_tasks SET prelabel_version = ? WHERE scan_id = ?",
                                  (version, scan_id))

    def prelabel_version(self, scan_id: str) -> int | None:
        rows = self.svc.registry.query("SELECT prelabel_version FROM label_studio_tasks WHERE scan_id = ?",
                                       (scan_id,))
        return int(rows[0][0]) if rows else None

    def _claim(self, rev: Revision) -> None:
        now = time.time()
        key = (rev.annotation_id, rev.updated_at)
        if self.svc.registry.execute(
                "INSERT INTO label_studio_revisions (annotation_id, updated_at, scan_id, task_id, state, labeled_by, "
                "started_at) VALUES (?, ?, ?, ?, 'sending', ?, ?) ON CONFLICT (annotation_id, updated_at) DO NOTHING",
                (*key, rev.scan_id, rev.task_id, rev.labeled_by, now)):
            return
        if self.svc.registry.execute("UPDATE label_studio_revisions SET started_at = ? WHERE annotation_id = ? AND "
                                     "updated_at = ? AND state = 'sending' AND started_at < ?",
                                     (now, *key, now - STALE_S)):
            return  # a claim left by a process stopped mid-send
        raise Busy(f"annotation {rev.annotation_id} ({rev.updated_at}) is being sent by another delivery")

    def _release(self, rev: Revision) -> None:
        self.svc.registry.execute("DELETE FROM label_studio_revisions WHERE annotation_id = ? AND updated_at = ? "
                                  "AND state = 'sending'", (rev.annotation_id, rev.updated_at))

    def _finish_item(self, rev: Revision, domain: str) -> None:
        """The review item leaves the queue as labeled (a later revision finds it finished already)."""
        try:
            self.svc.queue.begin(rev.scan_id, LABEL_STUDIO_ACCOUNT)
        except Refused:
            return
        self.svc.queue.finish(rev.scan_id, rev.labeled_by, "labeled", labeled_domain=domain)
