"""The cluster as hosts see it (issue 23, finding 1): three Linux network namespaces joined by a
bridge, each with its own address: a head started with cluster.yaml's own commands (parsed from the
file: the shared secrets, `ray start --head`, MLflow's basic-auth server), a worker node that joins
with the token, and an outsider. From the outsider, every Ray port refuses a client without the
token and MLflow answers 401; on the worker node, a client with the token sees both nodes. The
listeners in the head's namespace are the ones docs/security.md names.

From the worker node, ``raysweep launch --address`` with the token runs a 2-trial sweep.

Needs root (``ip netns add``); skips, saying why, where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from ..cluster_yaml import (BIN, CLUSTER, as_postgres_user, exports as _exports, here, mlflow_server_command,
                            postgres_commands, postgres_home)
from ..conftest import REPO

pytestmark = pytest.mark.slow
NET = "10.231.77"
ADDRESSES = {"head": f"{NET}.1", "worker": f"{NET}.2", "outsider": f"{NET}.3"}


def ray_dirs() -> dict[str, str]:
    """Each node's Ray folder (short: Ray's socket paths must stay under 108 bytes)."""
    return {role: f"/tmp/rs-{os.getpid()}-{role}" for role in ("head", "worker")}


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=120)


class Network:
    """A bridge and one host per role: its own network namespace (address), PID namespace and
    mount namespace, held by a small init process; ``close`` kills what runs there and removes it
    all. Separate PID and mount namespaces matter: a Ray driver picks its node by listing the
    raylets in ``ps`` (preferring the head's), and real hosts share no /tmp."""

    def __init__(self):
        tag = uuid.uuid4().hex[:5]
        self.bridge, self.names = f"rsb{tag}", {role: f"rs{role[:3]}{tag}" for role in ADDRESSES}
        self.holders: dict[str, subprocess.Popen] = {}
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for role, ns in self.names.items():
            _sh("ip", "netns", "add", ns)
            inside, outside = f"v{role[:3]}{tag}", f"b{role[:3]}{tag}"
            _sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            _sh("ip", "link", "set", outside, "master", self.bridge)
            _sh("ip", "link", "set", outside, "up")
            _sh("ip", "link", "set", inside, "netns", ns)
            for cmd in (["ip", "addr", "add", f"{ADDRESSES[role]}/24", "dev", inside], ["ip", "link", "set", inside, "up"],
                        ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "dev", inside]):
                _sh("ip", "netns", "exec", ns, *cmd)
            # the host's init: hides the other hosts' Ray folders, then reaps orphans (Ray's daemons)
            hide = "".join(f"mkdir -p {d} && mount -t tmpfs tmpfs {d} && " for other, d in ray_dirs().items()
                           if other != role)
            self.holders[role] = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                 "--propagation", "private", "bash", "-c", hide + "trap : CHLD; while :; do sleep 3600 & wait $!; done"],
                start_new_session=True)
        for role, holder in self.holders.items():
            self._init_pid(role)

    def _init_pid(self, role: str) -> int:
        """The PID (as this machine sees it) of ``role``'s init, once it has hidden the folders."""
        deadline = time.time() + 30
        while time.time() < deadline:
            child = _sh("pgrep", "-P", str(self.holders[role].pid), check=False).stdout.split()
            if child and _sh("pgrep", "-P", child[0], "-x", "sleep", check=False).stdout.strip():
                return int(child[0])
            time.sleep(0.2)
        raise RuntimeError(f"the {role} host did not start")

    def _as_host(self, role: str, script: str) -> list[str]:
        return ["nsenter", "-t", str(self._init_pid(role)), "-p", "-m", "-n", "bash", "-c", script]

    def run(self, role: str, script: str, env: dict, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_host(role, script), env=env, capture_output=True, text=True, **kw)

    def start(self, role: str, script: str, env: dict, log: Path) -> subprocess.Popen:
        return subprocess.Popen(self._as_host(role, script), env=env, stdout=open(log, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def close(self):
        for holder in self.holders.values():  # a PID namespace's init dies: so does all it holds
            try:
                os.killpg(holder.pid, 9)
            except ProcessLookupError:
                pass
        for ns in self.names.values():
            for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)


def _as_here(cmd: str, shared: Path, tmp: Path, role: str) -> str:
    """A cluster.yaml command on this machine: the shared volume in a temporary folder, the venv's
    binaries, Ray's files in a folder per node (the namespaces share one filesystem)."""
    cmd = here(cmd, shared)
    cmd = cmd.replace(" --autoscaling-config=~/ray_bootstrap_config.yaml", "")
    if "ray start" in cmd:
        cmd += f" --temp-dir={ray_dirs()[role]} --disable-usage-stats" + ("" if "--num-cpus" in cmd else " --num-cpus=4")
    return cmd.replace("--workers 2", "--workers 1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip netns add)")
    probe = _sh("ip", "netns", "add", f"rsprobe{os.getpid()}", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    _sh("ip", "netns", "del", f"rsprobe{os.getpid()}", check=False)
    from .. import postgres

    if postgres.missing():  # the head's MLflow server keeps its runs in PostgreSQL
        pytest.skip(postgres.missing())
    tmp = tmp_path_factory.mktemp("cluster")
    pg_home = postgres_home()  # the head's home: PostgreSQL's files (~/raysweep-pg), owned by the user it runs as
    shared = tmp / "shared"
    shared.mkdir()
    net = Network()
    procs = []
    try:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(pg_home),
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
        for cmd in CLUSTER["setup_commands"]:  # the shared secrets (the venv and pip lines are this machine's)
            if "secrets" in cmd:
                done = net.run("head", _as_here(cmd, shared, tmp, "head"), env, timeout=60)
                assert done.returncode == 0, done.stderr
        common = {k: v for k, v in _exports(CLUSTER["setup_commands"], shared).items() if k.startswith("RAY_AUTH")}
        node_env = {**env, **common, **_exports(CLUSTER["head_setup_commands"], shared)}
        worker_env = {**env, **common, **_exports(CLUSTER["worker_setup_commands"], shared)}
        for cmd in postgres_commands():  # PostgreSQL's setup and start (the head's, as its user)
            done = net.run("head", shlex.join(as_postgres_user(_as_here(cmd, shared, tmp, "head"), pg_home)), env,
                           timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        for cmd in CLUSTER["head_start_ray_commands"]:
            if cmd.strip() == "ray stop" or cmd in postgres_commands():  # ray stop: would stop every Ray here
                continue
            here = _as_here(cmd, shared, tmp, "head")
            if "mlflow server" in here:
                procs.append(net.start("head", _as_here(mlflow_server_command(), shared, tmp, "head"), node_env,
                                       tmp / "mlflow.log"))
            else:
                done = net.run("head", here, node_env, timeout=180)
                assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        head = ADDRESSES["head"]
        for cmd in CLUSTER["worker_start_ray_commands"]:
            if cmd.strip() == "ray stop":
                continue
            here = _as_here(cmd, shared, tmp, "worker").replace("$RAY_HEAD_IP", head)
            done = net.run("worker", here, worker_env, timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        deadline = time.time() + 120
        while time.time() < deadline:  # the MLflow server answers (401 without credentials)
            probe = net.run("outsider", f"curl -s -o /dev/null -w '%{{http_code}}' http://{head}:5000/health", env,
                            timeout=30)
            if probe.stdout.strip() not in ("", "000"):
                break
            time.sleep(2)
        yield net, tmp, shared, env, node_env, worker_env
    finally:
        for folder in ray_dirs().values():
            shutil.rmtree(folder, ignore_errors=True)
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
        net.close()
        shutil.rmtree(pg_home, ignore_errors=True)  # its server died with the head's PID namespace


def _outsider_ray(net, env, address: str) -> subprocess.CompletedProcess:
    code = f"import ray\nray.init(address={address!r})\nprint('CONNECTED', ray.cluster_resources())"
    return net.run("outsider", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", env, timeout=120)


def _http(net, env, url: str) -> str:
    done = net.run("outsider", f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' {shlex.quote(url)}", env, timeout=60)
    return done.stdout.strip() or "000"


def test_an_outsider_without_the_token_is_refused_everywhere(cluster):
    net, tmp, shared, env, node_env, worker_env = cluster
    head = ADDRESSES["head"]
    outsider = {k: v for k, v in env.items() if not k.startswith(("RAY_AUTH", "MLFLOW_TRACKING"))}
    gcs = _outsider_ray(net, outsider, f"{head}:6379")
    assert "CONNECTED" not in gcs.stdout and gcs.returncode != 0
    assert "Authentication token is missing or incorrect" in gcs.stdout + gcs.stderr
    # no Ray Client server (10001): the port is closed (cluster.yaml installs no ray[client])
    closed = net.run("outsider", f"{shlex.quote(sys.executable)} -c " + shlex.quote(
        f"import socket\ntry:\n    socket.create_connection(('{head}', 10001), timeout=5); print('OPEN')\n"
        "except OSError as e:\n    print('CLOSED', e)"), outsider, timeout=60)
    assert closed.stdout.startswith("CLOSED"), closed.stdout
    assert _http(net, outsider, f"http://{head}:8265/api/jobs/") == "000"  # the job API: loopback only
    agent = _http(net, outsider, f"http://{head}:52365/api/job_agent/jobs/")
    listening = net.run("head", "ss -ltnH", env, timeout=30).stdout
    if ":52365 " in listening:  # the agent runs where Ray's dashboard packages are installed
        assert agent in ("401", "403"), f"the dashboard agent answered {agent} without the token"
    else:
        assert agent == "000"
    assert _http(net, outsider, f"http://{head}:5000/api/2.0/mlflow/experiments/search?max_results=1") == "401"
    # with the wrong token, still refused
    (tmp / "wrong_token").write_text("0" * 64)
    wrong = _outsider_ray(net, {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "wrong_token")},
                          f"{head}:6379")
    assert "CONNECTED" not in wrong.stdout


def test_the_worker_node_joins_with_the_token(cluster):
    """The worker node started by cluster.yaml's own command joined the head; a client on it
    with the token sees both nodes."""
    net, tmp, shared, env, node_env, worker_env = cluster
    code = (f"import ray\nray.init(address='{ADDRESSES['head']}:6379')\n"
            "print('NODES', sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))")
    done = net.run("worker", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", worker_env, timeout=120)
    assert f"NODES ['{ADDRESSES['head']}', '{ADDRESSES['worker']}']" in done.stdout, done.stdout + done.stderr[:3000]
    # the worker's MLflow credentials are the trials' user's, created at the head's start, not an
    # admin: it reads no experiment it was not granted and administers no user
    user, password = worker_env["MLFLOW_TRACKING_USERNAME"], worker_env["MLFLOW_TRACKING_PASSWORD"]
    assert user != node_env["MLFLOW_TRACKING_USERNAME"]
    base = f"http://{ADDRESSES['head']}:5000/api/2.0/mlflow"
    admin = f"curl -s -u {shlex.quote(node_env['MLFLOW_TRACKING_USERNAME'] + ':' + node_env['MLFLOW_TRACKING_PASSWORD'])}"
    made = net.run("head", f"{admin} -H 'Content-Type: application/json' -X POST -d '{{\"name\": \"admins\"}}' "
                           f"{base}/experiments/create", env, timeout=60).stdout
    experiment = json.loads(made)["experiment_id"]
    curl = f"curl -s -o /dev/null -w '%{{http_code}}' -u {shlex.quote(user + ':' + password)}"
    read = net.run("worker", f"{curl} '{base}/experiments/get?experiment_id={experiment}'", env, timeout=60).stdout
    new_user = net.run("worker", f"{curl} -H 'Content-Type: application/json' -X POST "
                                 f"-d '{{\"username\": \"mallory\", \"password\": \"{'x' * 16}\"}}' "
                                 f"{base}/users/create", env, timeout=60).stdout
    assert (read, new_user) == ("403", "403")


def test_every_listener_on_the_head_is_documented(cluster):
    """`ss -ltn` in the head's namespace: each listening port is in docs/security.md's table,
    bound as the table says (loopback, the private address, or every interface)."""
    net, *_ = cluster
    listing = net.run("head", "ss -ltnpH", os.environ, timeout=30).stdout
    table = (REPO / "docs" / "security.md").read_text()
    documented = {}
    for row in re.findall(r"^\| `([\d-]+)` \| ([^|]+) \| ([^|]+) \|", table, flags=re.M):
        documented[row[0]] = row[2].strip()
    assert documented, f"docs/security.md has no listener table\n{listing}"

    def entry(port: int):
        for key, bound in documented.items():
            lo, _, hi = key.partition("-")
            if int(lo) <= port <= int(hi or lo):
                return key, bound
        return None, None

    undocumented = []
    for line in listing.splitlines():
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        key, bound = entry(int(port))
        where = "loopback" if host.startswith("127.") or host == "[::1]" else \
            "private address" if host == ADDRESSES["head"] else "every interface"
        if key is None or bound != where:
            undocumented.append(f"{local} ({line.split('users:')[-1] if 'users:' in line else '?'}): table says {bound}")
    assert not undocumented, f"{undocumented}\n{listing}"


def test_a_sweep_launched_from_the_worker_node_runs(cluster, tofu_dir):
    """`raysweep launch --address HEAD:6379` on the worker node, with the token and the admin's
    MLflow credentials (the person launching), runs a 2-trial sweep: its trials run on the worker
    node (the head has no CPUs) and log, as the trials' user, to the head's MLflow server."""
    from ..conftest import tiny_job

    net, tmp, shared, env, node_env, worker_env = cluster
    head = ADDRESSES["head"]
    root = tmp / "sweep"
    root.mkdir()
    job = yaml.safe_load(tiny_job(root, tofu_dir, steps=2).read_text())
    (root / "space.yaml").write_text(yaml.safe_dump({"method": {"graddiff": {"alpha": {"uniform": [0.5, 1.5]}}}}))
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 4, "max_new_tokens": 4}
    job["sweep"] = {"search_space": str(root / "space.yaml"), "sampler": "random", "num_trials": 2, "max_concurrent": 2,
                    "objectives": {"forget_answer_loss": "max", "retain_answer_loss": "min"},
                    "tracking_uri": f"http://{head}:5000", "storage_path": str(shared / "raysweep" / "runs")}
    (root / "sweep.yaml").write_text(yaml.safe_dump(job))
    # the person launching: the Ray token, and the MLflow admin who grants the trials' user
    launcher = {**worker_env, **{k: v for k, v in node_env.items() if k.startswith(("MLFLOW_TRACKING", "RAYSWEEP_"))}}
    done = net.run("worker", f"{BIN}/raysweep launch {root / 'sweep.yaml'} --address {head}:6379 --name from-worker",
                   launcher, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    code = ("from raysweep.sweep import tracking\nc = tracking.client('http://%s:5000')\n"
            "runs = c.search_runs([c.get_experiment_by_name('raysweep/tiny-test').experiment_id],"
            " 'tags.raysweep.trial_id != \"\"')\nprint('TRIALS', sorted(r.info.status for r in runs))" % head)
    listed = net.run("worker", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", launcher, timeout=120)
    assert "TRIALS ['FINISHED', 'FINISHED']" in listed.stdout, listed.stdout + listed.stderr[-3000:]
