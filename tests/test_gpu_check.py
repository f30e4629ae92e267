"""``benchmarks/gpu_check.py --dry-run`` (issue 26, part 3): the one-shot GPU check validates
everything and runs each of its four parts for one step on a tiny model on CPU, writing its JSON
and Markdown table, so the script works the day a GPU is lent."""

import json
import os
import subprocess
import sys

from .conftest import REPO, SHARED_DATA


def test_gpu_check_dry_run_runs_every_part_and_writes_its_table(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "RAYSWEEP_DATA": str(SHARED_DATA)}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run",
                          "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu (dry run)"
    a = {r["gradient_checkpointing"]: r for r in result["a_step_time"]}
    assert a[False]["bare_s"] > 0 and a[True]["bare_s"] > 0 and a[False]["ratio"] == a[False]["ray_s"] / a[False]["bare_s"]
    assert [r["strategy"] for r in result["b_memory"]] == ["ddp", "fsdp (world 1)", "lora"]
    assert all(r["peak_gib"] > 0 and r["step_s"] > 0 for r in result["b_memory"])
    assert result["c_sweep"]["trials"] == 1 and result["c_sweep"]["front"] == 1
    assert result["d_generation"]["questions"] == 4 and result["d_generation"]["seconds"] > 0
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for part in ("(a)", "(b)", "(c)", "(d)", "fsdp (world 1)", "dry run"):
        assert part in table, part
