"""The quick fault suite, as `make test` runs it: real broker, learner and server processes on loopback."""

from __future__ import annotations

import json

from weldstream.bench.faults.cli import QUICK, run_faults
from weldstream.bench.faults.report import write_report


async def test_quick_fault_suite_passes_every_row(tmp_path):
    results = await run_faults(QUICK, seed=0)
    md, raw = write_report(results, tmp_path, "quick")
    failed = {r.fault: r.measured for r in results if not r.passed and not r.skipped}
    assert not failed, failed
    assert {r.fault.split(" x")[0] for r in results} >= {"hostile payloads (fuzz)", "learner SIGKILL",
                                                         "damaged versions", "server SIGKILL"}
    kills = next(r for r in results if r.fault.startswith("learner SIGKILL")).figures
    assert kills["lost"] == 0 and kills["accounted"] == kills["produced"]
    assert kills["hostile_dead_lettered_with_reason"] == kills["hostile"]
    assert next(r for r in results if r.fault.startswith("server SIGKILL")).figures["requests_lost"] == 0
    outage = next(r for r in results if r.fault.startswith("store outage"))
    assert outage.figures["failed"] == 0 and outage.figures["requests"] > 0, outage.figures
    assert "| fault | what was done | expected | measured | pass |" in md.read_text()
    assert len(json.loads(raw.read_text())["results"]) == len(results)
