"""An unmodified tritonclient[grpc] client speaks to the server's KServe v2 endpoint."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).parent / "clients" / "triton_client.py"


async def test_tritonclient_works_unmodified(server):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), f"127.0.0.1:{server.port}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["live"] and result["ready"] and result["model_ready"]
    assert result["server"]["name"] == "weldstream"
    assert result["model"]["name"] == "weld-seg"
    assert [o["name"] for o in result["model"]["outputs"]] == ["mask", "confidence", "doubt"]
    assert result["mask"] == {"shape": [2, 72, 100], "dtype": "uint8", "max": result["mask"]["max"]}
    assert result["mask"]["max"] < 5
    assert result["confidence"]["shape"] == [2, 72, 100] and result["confidence"]["dtype"] == "float32"
    assert result["confidence"]["min"] > 0.19
    assert result["version"] == "0"
    assert result["bad_model"] == "StatusCode.INVALID_ARGUMENT"
    assert result["plain_outputs"] == ["confidence", "mask"]  # no regions unless asked for
    assert len(result["regions"]) == 2 and result["regions_mask_equal"]
    for regions in result["regions"]:
        for region in regions:
            assert region["class_id"] > 0 and region["area_px"] >= 4 and 0 < region["mean_confidence"] <= 1


async def test_the_outside_latency_client_times_tritonclient_against_an_eager_forward(server):
    """The check of docs/benchmarks/serve.md's outside rows runs unmodified against a server (no timing
    asserted here: figures belong in the benchmark)."""
    script = Path(__file__).parent / "clients" / "triton_latency.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"127.0.0.1:{server.port}", "--size", "64", "--turns", "2", "--calls", "3",
        "--warm-up", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["size"] == 64 and result["calls"] == 6 and len(result["ratio_by_turn"]) == 2
    assert set(result["p50_ms"]) == {"eager_fp32_forward", "tritonclient"}
    assert all(value > 0 for value in result["p50_ms"].values())
    assert result["ratio"] == result["p50_ms"]["tritonclient"] / result["p50_ms"]["eager_fp32_forward"]
