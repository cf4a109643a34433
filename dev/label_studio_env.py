"""Label Studio in a virtual environment of its own, made once and reused, and started on loopback.

Label Studio pins its own Django stack and an older numpy, so it never shares weldstream's environment:
``python -m weldstream.dev.label_studio_env`` builds (or reuses) the venv in
``~/.cache/weldstream/label-studio-venv`` (``WELDSTREAM_LABEL_STUDIO_VENV`` elsewhere) and prints its path.
``LabelStudioProcess`` runs it with a data folder of its own, its first user and legacy API token, and the
two settings a plant's private network needs (webhooks and ML backends on private addresses).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PINS = ("label-studio==1.23.2", "label-studio-sdk==2.1.2")
DEFAULT_VENV = Path.home() / ".cache" / "weldstream" / "label-studio-venv"
READY_MARK = ".weldstream-ready"
# Label Studio refuses webhooks and ML backends on private and loopback addresses unless told otherwise.
PRIVATE_NETWORK_ENV = {"USE_DEFAULT_BANNED_SUBNETS": "false", "ML_BLOCK_LOCAL_IP": "false"}


def venv_path() -> Path:
    return Path(os.environ.get("WELDSTREAM_LABEL_STUDIO_VENV") or DEFAULT_VENV)


def ready(venv: Path | None = None) -> bool:
    venv = venv or venv_path()
    mark = venv / READY_MARK
    return mark.exists() and mark.read_text() == "\n".join(PINS) and (venv / "bin" / "label-studio").exists()


def ensure_venv(venv: Path | None = None, python: str = sys.executable) -> Path:
    """Create the venv with the pinned Label Studio unless it is already there (about 3 minutes, 1 GB)."""
    venv = venv or venv_path()
    if ready(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *PINS], check=True)
    (venv / READY_MARK).write_text("\n".join(PINS))
    return venv


class LabelStudioProcess:
    """``label-studio start`` on 127.0.0.1:port with its data in ``data_dir``; stop() ends it."""

    def __init__(self, data_dir: Path, port: int, username: str, password: str, token: str,
                 venv: Path | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir, self.port, self.venv = data_dir, port, venv or venv_path()
        self.username, self.password, self.token = username, password, token
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 400.0) -> LabelStudioProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir), **PRIVATE_NETWORK_ENV,
               **self.extra_env}
        log = (self.data_dir / "label-studio.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(self.port), "--username", self.username, "--password", self.password,
             "--user-token", self.token, "--enable-legacy-api-token"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.data_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"Label Studio did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    print(ensure_venv())
