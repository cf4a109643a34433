"""bench first-minutes: the swap times read from a server's log, the freshness of each version, the report."""

from __future__ import annotations

import datetime

from weldstream.bench.first_minutes import format_report, freshness_rows, swap_times


def _stamp(seconds: float) -> str:
    moment = datetime.datetime(2026, 12, 4, 17, 0, 0) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


def test_swap_times_are_read_from_the_servers_log_lines() -> None:
    log = "\n".join([
        f"{_stamp(0)} INFO weldstream.server.app: listening on 0.0.0.0:8001",
        f"{_stamp(12.5)} INFO weldstream.server.model_slot: model swapped to version 1",
        "a line without a time stamp: model swapped to version 9",
        f"{_stamp(20.25)} INFO weldstream.server.model_slot: model swapped to version 2",
        f"{_stamp(30)} INFO weldstream.server.model_slot: model swapped to version 1",  # a rollback: first kept
    ])
    swaps = swap_times(log)
    base = datetime.datetime(2026, 12, 4, 17, 0, 0).timestamp()
    assert list(swaps) == [1, 2]
    assert swaps[1] - base == 12.5 and swaps[2] - base == 20.25


def test_freshness_is_the_swap_time_minus_the_versions_median_label_time() -> None:
    started = 1_000.0
    swaps = {1: 1_010.0, 2: 1_020.0, 3: 1_040.0, 4: 2_000.0, 0: 900.0}
    manifests = {
        1: {"metrics": {"label_time_median": 1_004.0, "labels_learned": 30, "steps": 20}},
        2: {"metrics": {"label_time_median": 1_011.5, "labels_learned": 40, "steps": 40}},
        3: {"metrics": {"label_time_median": 0.0, "labels_learned": 0, "steps": 60}},  # no new label: no figure
        4: {"metrics": {"label_time_median": 1_990.0}},  # after the client stopped: not counted
    }
    rows = freshness_rows(swaps, manifests, started, ended=1_240.0)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert [r["freshness_s"] for r in rows] == [6.0, 8.5, None]
    assert rows[0]["swapped_after_s"] == 10.0 and rows[1]["labels"] == 40

    result = {"config": {"duration_s": 240.0, "calls_per_s": 2.0, "size": [256, 256], "cpu_count": 2,
                         "torch": "2.14.1", "finished": "2026-12-04 17:04"},
              "calls": 480, "failed_calls": 0, "errors": [], "p50_ms": 40.0, "versions_answered": [0, 1, 2, 3],
              "new_versions_served": 3, "versions": rows, "freshness_median_s": 7.25, "judgement_mean_s": 1.5,
              "last_version": {"version": 3, "steps": 60, "scores": {"ut-pe100-5mhz": 0.5}}}
    report = format_report(result)
    assert "New versions served within 240 s: **3**" in report and "**0 failed**" in report
    assert "**7.2 s** (2 versions)" in report and "| 3 | 40.0 | 0 | 60 | n/a |" in report
