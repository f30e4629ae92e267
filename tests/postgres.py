"""A real PostgreSQL server for a test or a benchmark: ``initdb`` and ``pg_ctl`` in a temporary
folder, on a free loopback port, its unix socket in that folder. As root the server runs as the
``postgres`` user (PostgreSQL refuses to run as root). ``make postgres`` installs it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Optional

INSTALL = "make postgres (or: apt-get install -y postgresql), and pip install psycopg2-binary"


def pg_bin() -> Optional[Path]:
    """The folder of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[-3]))
    return Path(versions[-1]).parent if versions else None


def missing() -> Optional[str]:
    """Why PostgreSQL cannot run here (None when it can)."""
    if pg_bin() is None:
        return f"PostgreSQL is not installed (no initdb/pg_ctl): {INSTALL}"
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:
        return f"psycopg2 (MLflow's PostgreSQL driver) is not installed: {INSTALL}"
    if os.geteuid() == 0 and not _user_exists("postgres"):
        return "running as root and there is no 'postgres' user to run the server as (PostgreSQL refuses root)"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` as the user PostgreSQL runs as: this one, or ``postgres`` when this is root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """``start()``: a new cluster in a folder of its own under /tmp (pytest's folders are closed
    to the ``postgres`` user), with user ``mlflow`` (password auth on TCP) and database
    ``mlflow``; ``uri``: what ``mlflow server --backend-store-uri`` takes. ``fsync``: off for
    tests (nothing to survive a power cut), on for benchmarks."""

    def __init__(self, password: str = "pg-test-password", max_connections: int = 200, fsync: bool = False):
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="raysweep-pg-"))
        self.password, self.max_connections, self.fsync = password, max_connections, fsync
        self.data, self.port = self.root / "data", free_port()

    @property
    def uri(self) -> str:
        # The driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, not psycopg2.
        return f"postgresql+psycopg2://mlflow:{self.password}@127.0.0.1:{self.port}/mlflow"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(as_server_user(list(cmd)), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    def start(self) -> "Postgres":
        binary = pg_bin()
        give_to_server_user(self.root)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        give_to_server_user(pwfile)
        self._run(str(binary / "initdb"), "-D", str(self.data), "-U", "mlflow", "-A", "scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8")
        pwfile.unlink()
        self._run(str(binary / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections={self.max_connections}"
                  f" -c fsync={'on' if self.fsync else 'off'}", "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", password=self.password,
                                dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(as_server_user([str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)
