"""From outside: an unmodified tritonclient against a running server, timed against the fp32 eager forward
of the same architecture written by hand in this process, in turns so that both see the same machine.

    python tests/clients/triton_latency.py HOST:PORT --size 256 --turns 6 --calls 30

Prints one JSON object: p50 and p99 ms of each, their p50 ratio, and the ratio turn by turn. The scan is an
FP32 (1, 1, size, size) tensor, every output requested as tritonclient does by default.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
import tritonclient.grpc as triton

from weldstream.model import ModelConfig, build_model

parser = argparse.ArgumentParser()
parser.add_argument("target")
parser.add_argument("--size", type=int, default=256)
parser.add_argument("--turns", type=int, default=6)
parser.add_argument("--calls", type=int, default=30, help="calls of each in a turn")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--warm-up", type=int, default=5)
args = parser.parse_args()

torch.set_num_threads(args.threads)
by_hand = build_model(ModelConfig()).eval()
x = torch.randn(1, 1, args.size, args.size)
client = triton.InferenceServerClient(url=args.target)
scan = (np.random.default_rng(0).random((1, 1, args.size, args.size)) * 4095).astype(np.float32)
scan_input = triton.InferInput("scan", list(scan.shape), "FP32")
scan_input.set_data_from_numpy(scan)


def eager() -> None:
    with torch.inference_mode():
        by_hand(x)


def remote() -> None:
    client.infer("weld-seg", [scan_input])


calls = {"eager_fp32_forward": eager, "tritonclient": remote}
for call in calls.values():
    for _ in range(args.warm_up):
        call()
times: dict[str, list[float]] = {name: [] for name in calls}
for _ in range(args.turns):
    for name, call in calls.items():
        for _ in range(args.calls):
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
p50 = {name: statistics.median(values) for name, values in times.items()}
p99 = {name: sorted(values)[min(len(values) - 1, int(len(values) * 0.99))] for name, values in times.items()}


def turn(name: str, i: int) -> float:
    return statistics.median(times[name][i * args.calls:(i + 1) * args.calls])


print(json.dumps({
    "size": args.size, "calls": len(times["tritonclient"]), "p50_ms": p50, "p99_ms": p99,
    "ratio": p50["tritonclient"] / p50["eager_fp32_forward"],
    "ratio_by_turn": [turn("tritonclient", i) / turn("eager_fp32_forward", i) for i in range(args.turns)],
}))
client.close()
