"""cluster.yaml's own commands, run on this machine by the tests (tests/slow/test_cluster_network.py,
tests/slow/test_cluster_postgres.py): the shared volume moved to a temporary folder, the venv's
binaries, the exported environment read back."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from .conftest import REPO

CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
BIN = Path(sys.executable).parent


def exports(commands, shared: Path) -> dict:
    """The ``echo 'export K=V ...' >> ~/.bashrc`` lines of setup commands, as an environment (the
    shared volume moved; a ``$(cat FILE)`` value read from the file)."""
    env = {}
    for cmd in commands:
        m = re.match(r"echo '(export .*)' >> ~/\.bashrc$", " ".join(cmd.split()))
        if m:
            for key, value in re.findall(r"(\w+)=(\$\([^)]*\)|\S+)", m.group(1)):
                value = value.replace("/shared", str(shared))
                read = re.fullmatch(r"\$\(cat (.+)\)", value)
                env[key] = Path(read.group(1)).read_text().strip() if read else value
    return env


def here(cmd: str, shared: Path) -> str:
    """A cluster.yaml command with the shared volume in ``shared`` and this venv's binaries."""
    return cmd.replace("/shared", str(shared)).replace("~/venv/bin/", f"{BIN}/")


def postgres_commands() -> list[str]:
    """The head's PostgreSQL commands (setup, then start), in order; not the MLflow server's."""
    return [c for c in CLUSTER["head_setup_commands"] + CLUSTER["head_start_ray_commands"]
            if "raysweep-pg" in c and "mlflow server" not in c]


def mlflow_server_command() -> str:
    """The head's ``mlflow server`` command, to run in the foreground (``exec``) of its own process
    (paths as in the file: :func:`here` moves them)."""
    cmd = next(c for c in CLUSTER["head_start_ray_commands"] if "mlflow server" in c)
    server = cmd.strip().lstrip("(").rstrip(")& ").replace("nohup", "exec")
    return server.split(" > ")[0]


def postgres_home() -> Path:
    """The head's home for PostgreSQL's commands (``~/raysweep-pg``): a folder of its own under /tmp,
    owned by the user PostgreSQL runs as (pytest's folders are closed to other users)."""
    import tempfile

    from .postgres import give_to_server_user

    home = Path(tempfile.mkdtemp(prefix="raysweep-pghome-"))
    give_to_server_user(home)
    return home


def as_postgres_user(cmd: str, home: Path) -> list[str]:
    """A PostgreSQL command of cluster.yaml, run as the head's user would (as root: as ``postgres``,
    which PostgreSQL requires) with ``home`` as its home."""
    import os

    from .postgres import as_server_user

    return as_server_user(["env", f"HOME={home}", f"PATH={os.environ['PATH']}", "bash", "-c", cmd])
