"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, a free loopback port.

Uses the binaries of Debian's ``postgresql`` package. PostgreSQL refuses to run as root, so under root the
server runs as the package's ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from weldstream.dev.broker import free_port


def postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None where PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@contextmanager
def running_postgres(bin_dir: Path) -> Iterator[str]:
    """Start a fresh cluster; yields its URL (trust auth on loopback) and removes it afterwards."""
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="weldstream-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run([str(bin_dir / args[0]), *args[1:]], check=True, user=user, cwd=root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
