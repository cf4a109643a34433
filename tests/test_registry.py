"""The registry on SQLite and on a real PostgreSQL server that the test starts itself."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from weldstream.model import ModelConfig, build_model
from weldstream.registry import REGISTRY_FILE, Round, open_configured, open_registry
from weldstream.weight_store import WeightStore

from .postgres import postgres_bin, running_postgres


@pytest.fixture(scope="module")
def postgres_url():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl; apt-get install -y postgresql)")
    if importlib.util.find_spec("pg8000") is None:
        pytest.skip("the pg8000 driver is not installed (pip install 'weldstream[postgres]')")
    with running_postgres(bin_dir) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    if request.param == "sqlite":
        return ""
    url = request.getfixturevalue("postgres_url")
    # A fresh schema per test: drop what the previous test left.
    registry = open_registry(url, tmp_path)
    for table in ("versions", "scores", "rounds", "actions", "serving"):
        registry._execute(f"DROP TABLE IF EXISTS {table}")
    registry.close()
    return url


def _publish(store: WeightStore, parent: int, miou: float) -> int:
    state = build_model(ModelConfig(), seed=parent).state_dict()
    return store.publish(state, ModelConfig(), parent_version=parent, strategy="replay-gem",
                         scores={"ut": {"miou": miou, "dice": miou + 0.1, "samples": 8},
                                 "xray": {"miou": miou / 2, "dice": miou / 2 + 0.1, "samples": 6}}).version


def test_versions_lineage_rounds_actions_and_serving(tmp_path, registry_url):
    store = WeightStore(tmp_path / "models")
    registry = open_registry(registry_url, store.root)
    try:
        first = _publish(store, 0, 0.4)
        assert registry.sync(store) == 1 and registry.sync(store) == 0  # backfilled once
        second = _publish(store, first, 0.5)
        registry.record_version(store.manifest(second))
        registry.record_version(store.manifest(second))  # versions are immutable: a repeat is a no-op
        third = _publish(store, second, 0.6)
        registry.record_version(store.manifest(third))

        assert [v.version for v in registry.versions()] == [1, 2, 3]
        row = registry.version(2)
        assert row.parent_version == 1 and row.strategy == "replay-gem" and row.manifest == store.manifest(2)
        assert registry.version(99) is None
        assert registry.scores(3) == {"ut": {"miou": 0.6, "dice": 0.7, "samples": 8},
                                      "xray": {"miou": 0.3, "dice": 0.4, "samples": 6}}
        assert registry.lineage(3) == [3, 2, 1, 0]

        registry.record_round(Round("learner", "replay-gem", 100.0, 2.5, 12, 40, compared_with=2, outcome="promoted",
                                    version=3, offsets=[{"topic": "t", "partition": 0, "offset": 12}],
                                    scores={"ut": {"miou": 0.6}}))
        registry.record_round(Round("learner", "replay-gem", 110.0, 2.0, 3, 20, compared_with=3, outcome="refused",
                                    reason="regressed ut"))
        latest, promoted = registry.rounds()
        assert latest.outcome == "refused" and latest.version is None and latest.reason == "regressed ut"
        assert promoted.version == 3 and promoted.offsets[0]["offset"] == 12 and promoted.duration_s == 2.5
        assert [r.outcome for r in registry.rounds(version=3)] == ["promoted"]

        registry.record_action("pin", 2, previous=3, actor="alice", reason="audit")
        registry.record_action("unpin", None, previous=2, actor="alice")
        assert [(a.action, a.version, a.previous) for a in registry.actions()] == [("unpin", None, 2),
                                                                                   ("pin", 2, 3)]

        registry.record_serving("a:1", 1, since=10.0)
        registry.record_serving("b:1", 1, since=11.0)
        registry.record_serving("a:1", 3, since=20.0)
        spans = registry.serving()
        assert [(s.server, s.version, s.since, s.until) for s in spans] == [
            ("a:1", 1, 10.0, 20.0), ("b:1", 1, 11.0, None), ("a:1", 3, 20.0, None)]
        assert [s.server for s in registry.serving(version=1)] == ["a:1", "b:1"]
    finally:
        registry.close()


def test_a_second_connection_sees_the_first_ones_writes(tmp_path, registry_url):
    store = WeightStore(tmp_path / "models")
    writer, reader = open_registry(registry_url, store.root), open_registry(registry_url, store.root)
    try:
        assert reader.versions() == []
        registry_version = _publish(store, 0, 0.3)
        writer.record_version(store.manifest(registry_version))
        assert [v.version for v in reader.versions()] == [registry_version]
    finally:
        writer.close()
        reader.close()


def test_sqlite_is_a_file_in_the_weight_store_by_default(tmp_path):
    registry = open_registry("", tmp_path)
    registry.close()
    assert (tmp_path / REGISTRY_FILE).exists() and registry.dialect == "sqlite"


def test_an_unknown_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="postgresql://"):
        open_registry("mysql://x@y/z", tmp_path)


def test_pin_and_served_version(tmp_path):
    store = WeightStore(tmp_path)
    assert store.served() is None and store.pinned() is None
    _publish(store, 0, 0.1)
    _publish(store, 1, 0.2)
    assert store.served() == 2
    store.pin(1)
    assert store.pinned() == 1 and store.served() == 1
    with pytest.raises(ValueError, match="not in"):
        store.pin(7)
    store.unpin()
    store.unpin()  # twice is harmless
    assert store.pinned() is None and store.served() == 2


def test_the_dashboards_registry_panels_query_a_real_postgresql_registry(tmp_path, postgres_url):
    """Every SQL panel of the Grafana dashboard runs against the registry's schema and returns rows."""
    dashboard = json.loads((Path(__file__).parents[1] / "deploy/grafana/weldstream-dashboard.json").read_text())
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p.get("targets", []) if "rawSql" in t]
    assert len(queries) == 4
    registry = open_registry(postgres_url, tmp_path)
    try:
        for table in ("versions", "scores", "rounds", "actions", "serving"):
            registry._execute(f"DELETE FROM {table}")
        store = WeightStore(tmp_path / "models")
        registry.record_version(store.manifest(_publish(store, 0, 0.4)))
        registry.record_round(Round("learner", "replay-gem", time.time(), 1.5, 4, 20, compared_with=0,
                                    outcome="promoted", version=1))
        registry.record_action("pin", 1, None, "ops")
        registry.record_serving("a:1", 1)
        for sql in queries:
            # Grafana's macros: the dashboard's time range, here everything.
            sql = sql.replace("$__unixEpochFrom()", "0").replace("$__unixEpochTo()", "99999999999")
            assert registry._query(sql), sql
    finally:
        registry.close()


def test_a_registry_that_cannot_be_opened_is_logged_without_its_password(tmp_path, caplog):
    assert open_configured("off", tmp_path) is None
    assert open_configured("postgresql://ops:s3cret@127.0.0.1:1/registry", tmp_path) is None  # nothing listens
    assert "unavailable" in caplog.text and "s3cret" not in caplog.text and "ops:***@" in caplog.text
