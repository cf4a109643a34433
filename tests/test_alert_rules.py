"""The alert rules and the review loop's dashboard panels name metrics the server and learner really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from weldstream.learner.metrics import LearnerMetrics
from weldstream.server.metrics import ServerMetrics

DEPLOY = Path(__file__).parents[1] / "deploy"


def exported() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    families = [*ServerMetrics().registry.collect(), *LearnerMetrics().registry.collect()]
    return {family.name + suffix for family in families for suffix in suffixes.get(family.type, ("",))}


def metric_names(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b((?:inference|learner)_[a-z_]+)", expr)}


def test_alert_rules_name_exported_metrics():
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"WeldstreamRigDrifting", "WeldstreamDriftEvent", "WeldstreamHighDoubt",
                                           "WeldstreamStoreUnreachable", "WeldstreamLearnerCannotPublish"}
    known = exported()
    for rule in rules:
        assert metric_names(rule["expr"]) and metric_names(rule["expr"]) <= known, rule["alert"]
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    for config in (DEPLOY / "prometheus.yml", DEPLOY / "container/prometheus.yml"):
        assert any(Path(f).name == "alerts.yml" for f in yaml.safe_load(config.read_text())["rule_files"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], check=True)


def test_review_loop_panels_name_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana/weldstream-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"inference_scan_doubt_bucket", "inference_drift_score", "inference_drift_events_total",
            "inference_review_scans_total"} <= used
    assert used <= exported()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
