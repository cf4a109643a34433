"""`weldstream label-studio` settings: where Label Studio is, how to trust it, and how it reaches the console.

Each is a flag and a ``WELDSTREAM_*`` variable, as elsewhere; the token is read from a file and never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weldstream.settings import optional_path, setting

BACKEND_PREFIX = "/label-studio"  # where the console answers Label Studio (ML backend and webhook)
LABEL_STUDIO_ACCOUNT = "label-studio"  # the review queue's holder of the scans pushed to Label Studio


@dataclass(frozen=True)
class LabelStudioConfig:
    label_studio_url: str = setting("http://127.0.0.1:8090", help="Label Studio's address (http[s]://HOST:PORT)")
    label_studio_token_file: Path | None = setting(
        None, parse=optional_path, help="file holding a Label Studio API token: a legacy token or a personal access "
                                        "token (its refresh token); never logged")
    label_studio_ca: Path | None = setting(None, parse=optional_path,
                                           help="PEM CA bundle that signed Label Studio's certificate")
    label_studio_verify: bool = setting(True, help="verify Label Studio's TLS certificate (--no-label-studio-verify "
                                                   "only for a test rig)")
    project: str = setting("weldstream weld defects", flag="--label-studio-project",
                           help="the Label Studio project's title (reused when it exists)")
    backend_url: str = setting("", help="the console's /label-studio address as Label Studio reaches it, e.g. "
                                        "http://console.plant:8080/label-studio ('': connect no ML backend and no "
                                        "webhook; use `sync`)")
    console_token_file: Path | None = setting(
        None, parse=optional_path, help="file holding a console API token of an inspector account, which Label "
                                        "Studio sends with its predict calls (basic auth) and webhooks (bearer)")
    open_tasks: int = setting(50, help="at most this many unlabelled tasks in the project: push adds up to the gap")
    image_mb: float = setting(8.0, help="largest scan picture (8-bit PNG) sent inside a task, in MiB; a larger "
                                        "scan stays in the console's review queue")
    interval_s: float = setting(0.0, flag="--every-s", help="repeat every this many seconds (0: once)")
    timeout_s: float = setting(60.0, flag="--label-studio-timeout-s", help="timeout of one call to Label Studio")

    def token(self) -> str:
        if self.label_studio_token_file is None:
            raise ValueError("--label-studio-token-file is required (a Label Studio API token)")
        return self.label_studio_token_file.read_text(encoding="utf-8").strip()

    def console_token(self) -> str:
        if self.console_token_file is None:
            raise ValueError("--console-token-file is required with --backend-url (an inspector's API token)")
        return self.console_token_file.read_text(encoding="utf-8").strip()

    def verify(self) -> str | bool:
        if self.label_studio_ca is not None:
            return str(self.label_studio_ca)
        return self.label_studio_verify
