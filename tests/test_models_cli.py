"""`weldstream models` as an operator types it, against a weight store with three versions."""

from __future__ import annotations

from weldstream.model import ModelConfig, build_model
from weldstream.registry import open_registry
from weldstream.weight_store import WeightStore

from .test_cli import weldstream


def test_list_rollback_show_diff_and_unpin(tmp_path):
    store = WeightStore(tmp_path / "models")
    for version in (1, 2, 3):
        store.publish(build_model(ModelConfig(), seed=version).state_dict(), ModelConfig(),
                      parent_version=version - 1, strategy="replay-gem",
                      scores={"ut": {"miou": 0.3 + version / 10, "dice": 0.5, "samples": 8}},
                      metrics={"polarity": {"ut": {"dark": False, "defect_scans": 9, "dark_scans": 0},
                                            "x52": {"dark": True, "defect_scans": 10, "dark_scans": 9}}})
    where = ["--model-dir", str(store.root), "--kafka", ""]

    listed = weldstream("models", *where, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["version", "parent", "created", "(UTC)", "strategy", "ut"]
    assert lines[3].split()[:3] == ["*", "3", "2"] and lines[3].split()[-1] == "0.6000"

    rolled = weldstream("models", *where, "--actor", "ops", "rollback", "--reason", "drift")
    assert rolled.returncode == 0, rolled.stderr
    assert "rollback: served version 3 -> 2" in rolled.stdout and store.pinned() == 2

    shown = weldstream("models", *where, "show", "2")
    assert shown.returncode == 0, shown.stderr
    assert "[pinned, served]" in shown.stdout and "lineage    2 <- 1 <- 0" in shown.stdout
    assert "checksum   ok" in shown.stdout and "mIoU 0.5000" in shown.stdout
    assert "inverts    x52 (9 of 10 labeled defect scans read dark)" in shown.stdout

    diff = weldstream("models", *where, "diff", "1", "3")
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines()[1].split()[:4] == ["ut", "0.4000", "0.6000", "+0.2000"]

    unpinned = weldstream("models", *where, "unpin")
    assert "unpin: served version 2 -> 3" in unpinned.stdout and store.pinned() is None
    missing = weldstream("models", *where, "pin", "9")
    assert missing.returncode == 2 and "9" in missing.stdout and store.pinned() is None

    registry = open_registry("", store.root)
    assert [(a.action, a.actor, a.reason) for a in registry.actions()][-1] == ("rollback", "ops", "drift")
    registry.close()
