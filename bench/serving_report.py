"""The Markdown page of one `weldstream bench serve` run: the latency rows, the ratios against the eager
forward, batching, the cost of building the served backend at a swap, and the swap latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weldstream.bench.serving import SWAP_PHASE_S

ROWS = (
    ("eager_fp32_forward", "eager fp32 forward, by hand (build_model, eval, inference_mode)"),
    ("eager_fp32_forward_one_thread", "eager fp32 forward, by hand, on one thread"),
    ("eager_bf16_forward", "eager bf16-autocast forward, by hand"),
    ("eager_fp32_forward_beside_pipeline", "eager fp32 forward, by hand, in the pipeline rows' process"),
    ("backend_forward", "the server's backend forward alone"),
    ("pipeline_mask_only", "in-process pipeline, mask only"),
    ("pipeline_with_regions", "in-process pipeline, with regions"),
    ("grpc_segment", "gRPC Segment (server process, default request: no regions)"),
    ("grpc_segment_with_regions", "gRPC Segment, return_regions=true"),
    ("grpc_segment_rig_statistics", "gRPC Segment from a rig served with its own statistics (fp32 eager path)"),
    ("kserve_model_infer_fp32", "KServe v2 ModelInfer, FP32 scan, every output (as tritonclient sends it)"),
)


def format_table(result: dict[str, Any]) -> str:
    """A Markdown report of one run."""
    cfg, p50, p99, ratios = result["config"], result["p50_ms"], result["p99_ms"], result["ratios"]
    height, width = cfg["size"]
    asked = ("auto, the server's default: the fastest here" if cfg.get("backend_asked") == "auto"
             else f"--backend {cfg['backend']}")
    lines = [
        f"# weldstream bench serve: {height}x{width} uint16 scans, U-Net/mobilenet_v2 (fresh weights), "
        f"device {cfg['device_name']}, {cfg['threads']} threads, backend {cfg['served_backend']} ({asked})",
        "",
        f"torch {cfg['torch']}; load average at the end {', '.join(f'{v:.2f}' for v in cfg['load_average'])} "
        f"on {cfg['cpu_count']} CPUs; {cfg['requests']} timed calls per row, in turns of ten. The client rows (the "
        "eager forwards by hand, gRPC, KServe) run in a process of their own, as a rig's would; the pipeline rows "
        "in another, beside the same eager forward.",
        "",
        "| latency at batch 1 | p50 ms | p99 ms |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {label} | {p50[key]:.1f} | {p99[key]:.1f} |" for key, label in ROWS if key in p50]
    lines += [
        "",
        "| ratio (p50) | value | target |",
        "| --- | --- | --- |",
        f"| gRPC Segment ÷ eager fp32 forward | {ratios['grpc_over_eager_fp32_forward']:.2f}× | ≤ 1.0 on CPU |",
    ]
    if "kserve_fp32_over_eager_fp32_forward" in ratios:
        lines.append(f"| KServe ModelInfer (FP32) ÷ eager fp32 forward | "
                     f"{ratios['kserve_fp32_over_eager_fp32_forward']:.2f}× | ≤ 0.85 on CPU |")
    lines += [
        f"| gRPC Segment with regions ÷ eager fp32 forward | "
        f"{ratios['grpc_with_regions_over_eager_fp32_forward']:.2f}× | |",
        f"| gRPC Segment ÷ in-process pipeline (each over its process's eager forward) | "
        f"{ratios['grpc_over_pipeline']:.2f}× | |",
        f"| work around the forward, share of the pipeline (mask only) | "
        f"{ratios['around_forward_share_mask_only']:.1%} | ≤ 10 % at 512×512 |",
        f"| work around the forward, share of the pipeline (with regions) | "
        f"{ratios['around_forward_share_with_regions']:.1%} | |",
    ]
    if "rig_statistics_over_version" in ratios:
        lines.append(f"| gRPC Segment, a rig served with its own statistics ÷ with the version's | "
                     f"{ratios['rig_statistics_over_version']:.2f}× | |")
    if "grpc_over_eager_fp32_forward_one_thread" in ratios:
        lines.append(f"| gRPC Segment ÷ eager fp32 forward on one thread | "
                     f"{ratios['grpc_over_eager_fp32_forward_one_thread']:.2f}× | |")
    if "grpc_over_eager_bf16_forward" in ratios:
        lines.append(f"| gRPC Segment ÷ eager bf16 forward | {ratios['grpc_over_eager_bf16_forward']:.2f}× "
                     "| ≤ 2 on GPU |")
    rps = result["throughput_rps"]
    lines += ["", f"Throughput, {cfg['clients']} concurrent clients: {rps['batching_on']:.1f} req/s with dynamic "
                  f"batching (max batch 8), {rps['batching_off']:.1f} req/s without: "
                  f"**{ratios['batching_gain']:.2f}×**."]
    if cfg.get("auto_timings_ms"):
        lines += ["", "The server's start-up timing of each verified CPU backend (auto), median ms of a 384×384 "
                      "forward: " + ", ".join(f"{name} {ms:.1f}" for name, ms in cfg["auto_timings_ms"].items())
                  + "."]
    if "backend_build" in result:
        cost = result["backend_build"]
        export = f" (the ONNX export {cost['export_s']:.1f} s of it)" if "export_s" in cost else ""
        lines += ["", f"Building the served backend for a new version, on the loader thread beside the live model: "
                      f"{cost['total_s']:.1f} s{export}, median of 3."]
    if "swap" in result:
        swap = result["swap"]
        lines += ["", f"Hot swap ({swap['swaps']} swaps; quiet and swapping phases of {SWAP_PHASE_S:.0f} s "
                      f"alternate): p50 {swap['quiet_p50_ms']:.1f} → {swap['swapping_p50_ms']:.1f} ms "
                      f"({swap['p50_ratio']:.2f}×), p99 {swap['quiet_p99_ms']:.1f} → {swap['swapping_p99_ms']:.1f} ms "
                      f"(**{swap['p99_ratio']:.2f}×**, target ≤ 1.25)."]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> None:
    """table.md and results.json side by side in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(format_table(result))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
