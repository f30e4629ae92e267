"""cluster.yaml's tracking store (issue 28), read from the file: MLflow on PostgreSQL on the head's
local disk, listening on loopback, its password never on a command line. (The commands run for
real in tests/slow/test_cluster_postgres.py.)"""

import re

from .cluster_yaml import CLUSTER, postgres_commands


def _server() -> str:
    return " ".join(next(c for c in CLUSTER["head_start_ray_commands"] if "mlflow server" in c).split())


def test_the_cluster_tracks_on_postgresql_on_the_heads_local_disk_on_loopback():
    server = _server()
    store = re.search(r"--backend-store-uri (\S+)", server).group(1)
    assert store.startswith("postgresql+psycopg2://mlflow@127.0.0.1:"), store  # no password in the URI
    assert 'PGPASSFILE="$HOME/raysweep-pg/pgpass"' in server
    pg = " ".join(" ".join(c.split()) for c in postgres_commands())
    assert "/shared" not in pg, "PostgreSQL's data and password stay on the head's local disk"
    assert 'initdb" -D ~/raysweep-pg/data' in pg and "-A scram-sha-256" in pg
    assert "listen_addresses=127.0.0.1" in pg and "listen_addresses=*" not in pg
    port = re.search(r"-p (\d+)", pg).group(1)
    assert f"127.0.0.1:{port}/mlflow" in store and f"127.0.0.1:{port}:*:mlflow:" in pg
    assert "secrets.token_urlsafe" in pg and "umask 077" in pg  # a generated password, this user's only
    # the PostgreSQL driver comes with raysweep[postgres] on every node
    assert any('raysweep[postgres]' in c for c in CLUSTER["setup_commands"])
