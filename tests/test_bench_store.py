"""`weldstream bench store`, small: both stores' fleets really start, and every timed version reaches both
replicas (the figures themselves depend on the machine, so no wall-clock bounds here)."""

from __future__ import annotations

import json

from weldstream.bench.store_follow import BACKENDS
from weldstream.cli import main


def test_every_version_reaches_both_replicas_of_both_stores(tmp_path, capsys):
    assert main(["--log-level", "WARNING", "bench", "store", "--versions", "3", "--interval", "0.5",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["config"]["versions"] == 3 and result["config"]["server_backend"] == "torch"
    assert set(result["rows"]) == set(BACKENDS)
    for row in result["rows"].values():
        assert len(row["versions"]) == len(row["seconds"]) == 3
        assert row["versions"] == sorted(row["versions"]) and len(set(row["versions"])) == 3
        assert all(seconds > 0 for seconds in row["seconds"])
        assert 0 < row["median_s"] <= row["max_s"] and row["failed_calls"] == 0 and row["calls"] > 0
    assert result["ratio_s3_over_directory"] > 0
    table = (tmp_path / "table.md").read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    assert "--backend torch" in table and "| backend | versions | median s | max s | failed calls |" in table
    assert "S3 ÷ directory, medians" in table
