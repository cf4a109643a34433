"""The fault suite's report: a Markdown table for people and the raw figures as JSON."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FaultResult:
    fault: str
    done: str  # what was done
    expected: str
    measured: str = ""
    passed: bool = False
    seconds: float = 0.0
    skipped: str = ""  # why the fault could not be injected here (then it neither passes nor fails)
    figures: dict[str, Any] = field(default_factory=dict)


def markdown(results: list[FaultResult], mode: str) -> str:
    lines = [f"# weldstream fault suite ({mode})", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"Python {platform.python_version()}, {len(results)} faults, "
             f"{sum(r.passed for r in results)} passed, {sum(bool(r.skipped) for r in results)} not run.", "",
             "| fault | what was done | expected | measured | pass |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        verdict = "not run" if r.skipped else "yes" if r.passed else "**no**"
        lines.append(f"| {r.fault} | {r.done} | {r.expected} | {r.measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_report(results: list[FaultResult], out: Path, mode: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, raw = out / "faults.md", out / "faults.json"
    md.write_text(markdown(results, mode), encoding="utf-8")
    raw.write_text(json.dumps({"mode": mode, "results": [asdict(r) for r in results]}, indent=2, sort_keys=True),
                   encoding="utf-8")
    return md, raw
