"""``raysweep export`` of what a sweep records (issue 21): LoRA trials of every synthesis method (FIFO,
gradient checkpointing) at their last step, and one at a point along the run, into folders that
hold a user's files. Real local Ray, Optuna, sqlite MLflow,
peft; each export must load with ``AutoModelForCausalLM.from_pretrained`` (no peft) and reproduce
the metrics MLflow holds for that point."""

import json

import numpy as np
import pytest
import yaml

from ..conftest import tiny_job
from .test_sweep import launch_job
from .test_matrix_sweep import METHODS
from .test_trajectory import OBJECTIVES


@pytest.fixture(scope="module")
def lora_sweep(tmp_path_factory, tofu_dir, shared_cache):
    tmp = tmp_path_factory.mktemp("export")
    job = yaml.safe_load(tiny_job(tmp, tofu_dir, shared_cache, steps=4, batch_size=4).read_text())
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"method": {m: {} for m in METHODS}, "unlearn": {"lr": 3e-2}}))
    job["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    job["train"] = {"gradient_checkpointing": True}
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8, "every": 2}
    # Optuna's first 7 random draws under seed 140 are the 7 methods, each once (test_matrix_sweep.py)
    job["sweep"] = {"search_space": str(space), "objectives": OBJECTIVES, "sampler": "random",
                    "num_trials": len(METHODS), "seed": 140, "max_concurrent": 2}
    path, uri, report = launch_job(tmp, job, "lora.yaml", "lora")
    return tmp, path, uri, report


def _cli(capsys, *args):
    """The command line in this process (export and eval start no Ray): (exit code, stderr)."""
    from raysweep.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def _reproduces(tmp, job_path, out, point, capsys):
    """The folder loads as a plain model, and evaluating it gives the point's recorded objectives."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in model.state_dict())  # merged: no adapter left, no peft needed
    code, err = _cli(capsys, "eval", str(out), "--job", str(job_path), "--benchmark", "qa", "--out", str(tmp / "e.json"))
    assert code == 0, err[-2000:]
    again = json.loads((tmp / "e.json").read_text())
    again = again.get("metrics", again)
    for k, v in point["objectives"].items():
        assert again[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


@pytest.mark.matrix(strategy="inline", precision="fp32", lora="on", gradient_checkpointing="on", eval_every="on", scheduler="fifo", event="uninterrupted", export="final")
@pytest.mark.parametrize("method", METHODS)
def test_a_lora_trial_of_every_method_exports_merged_at_its_last_step(lora_sweep, capsys, method):
    tmp, path, uri, report = lora_sweep
    final = next(r for r in report["trials"] if r["final"] and r["method"] == method)
    out = tmp / f"lora_final_{method}"
    code, err = _cli(capsys, "export", "lora", final["trial_id"], str(out), "--tracking-uri", uri)
    assert code == 0, err[-2000:]  # was: "checkpoint ... does not fit the trial's model"
    manifest = json.loads((out / "raysweep_export.json").read_text())
    assert manifest["lora"] is True and sorted(p.name for p in out.iterdir()) == manifest["files"]
    _reproduces(tmp, path, out, final, capsys)


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="on", gradient_checkpointing="on", eval_every="on", scheduler="fifo", event="uninterrupted", export="mid_run")
@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="on", gradient_checkpointing="on", eval_every="on", scheduler="fifo", event="uninterrupted", export="final")
def test_export_into_a_users_folder_keeps_the_users_files(lora_sweep, capsys):
    """A mid-run point into a folder holding a user's file (with --force): the file survives, and a
    second export there replaces only what the first one wrote."""
    tmp, path, uri, report = lora_sweep
    mid = next(r for r in report["trials"] if r["step"] == 2 and r["method"] == "graddiff")
    final = next(r for r in report["trials"] if r["final"] and r["method"] == "graddiff")
    out = tmp / "project"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, err = _cli(capsys, "export", "lora", f"{mid['trial_id']}@2", str(out), "--tracking-uri", uri)
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    code, err = _cli(capsys, "export", "lora", f"{mid['trial_id']}@2", str(out), "--force", "--tracking-uri", uri)
    assert code == 0, err[-2000:]
    assert (out / "notes.txt").read_text() == "my notes"
    assert json.loads((out / "raysweep_export.json").read_text())["step"] == 2
    _reproduces(tmp, path, out, mid, capsys)

    code, err = _cli(capsys, "export", "lora", final["trial_id"], str(out), "--force", "--tracking-uri", uri)
    assert code == 0, err[-2000:]
    assert (out / "notes.txt").read_text() == "my notes"
    assert json.loads((out / "raysweep_export.json").read_text())["step"] is None
    assert not list(tmp.glob(".project.export-*"))  # no staging folder left behind


def test_a_users_file_named_like_ours_stops_the_export_before_anything_changes(lora_sweep, capsys):
    tmp, path, uri, report = lora_sweep
    final = next(r for r in report["trials"] if r["final"] and r["method"] == "graddiff")
    out = tmp / "clash"
    out.mkdir()
    (out / "README.md").write_text("the user's readme")
    code, err = _cli(capsys, "export", "lora", final["trial_id"], str(out), "--force", "--tracking-uri", uri)
    assert code == 2 and "README.md" in err and "nothing there was changed" in err
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]
    assert (out / "README.md").read_text() == "the user's readme"


# ---- raysweep densify on the LoRA sweep (issue 26, part 2): no sweep of its own ----------------
@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="on", gradient_checkpointing="on", eval_every="on", scheduler="fifo", event="uninterrupted", export="final")
def test_densify_interpolates_a_lora_points_adapter_and_the_export_reproduces_it(lora_sweep, capsys):
    """Target -> a LoRA point at lambda 0.5: the logged checkpoint is the point's adapters with
    lora_B halved (lora_A kept), so the exported merged weights are the target's plus half the
    point's delta; the point is on the recomputed front's list with the hypervolume re-derived here;
    the export loads with from_pretrained and reproduces its logged metrics."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report
    from .test_densify import hv2

    tmp, path, uri, report = lora_sweep
    before = pareto_report(tracking.client(uri), uri, "lora")
    point = next(r for r in report["trials"] if r["final"] and r["method"] == "graddiff")
    code, out = _cli_out(capsys, "densify", "lora", "--point", point["trial_id"], "--lambdas", "0.5", "--json",
                         "--tracking-uri", uri)
    assert code == 0, out
    summary = json.loads(out)
    assert [r["trial_id"] for r in summary["evaluated"]] == [f"i-{point['trial_id']}-l0.5"]

    c = tracking.client(uri)
    after = pareto_report(c, uri, "lora")
    row = next(r for r in after["trials"] if r["trial_id"] == f"i-{point['trial_id']}-l0.5")
    assert row["kind"] == "interpolated" and row["parents"] == ["target", point["trial_id"]]
    ckpt = {}
    for name, r in (("point", point), ("half", row)):
        (tmp / "densify_files" / name).mkdir(parents=True)
        inside = r["checkpoint_uri"][len("runs:/"):].partition("/")[2]  # runs:/<run>/<path>
        ckpt[name] = load_file(c.download_artifacts(r["run_id"], f"{inside}/model.safetensors",
                                                    str(tmp / "densify_files" / name)))
    assert set(ckpt["half"]) == set(ckpt["point"]) and all(".lora_" in k for k in ckpt["half"])  # adapter-sized
    for k, v in ckpt["point"].items():
        np.testing.assert_allclose(ckpt["half"][k], v * np.float32(0.5) if ".lora_B." in k else v, rtol=0, atol=0)

    names, directions = list(OBJECTIVES), list(OBJECTIVES.values())
    ref = [before["reference_point"][n] for n in names]
    pts = [tuple(r["objectives"][n] for n in names) for r in after["trials"] if r["feasible"]]
    assert summary["hypervolume_after"] == pytest.approx(hv2(pts, directions, ref), rel=1e-9)
    assert summary["hypervolume_after"] >= summary["hypervolume_before"] == pytest.approx(before["hypervolume"])
    assert c.get_run(row["run_id"]).data.tags["raysweep.pareto"] in ("front", "dominated")

    outs = {}
    for name, r in (("point", point), ("half", row)):
        outs[name] = tmp / f"densify_export_{name}"
        code, err = _cli(capsys, "export", "lora", r["trial_id"], str(outs[name]), "--tracking-uri", uri)
        assert code == 0, err[-2000:]
    target = AutoModelForCausalLM.from_pretrained(prepare(load_job(path), quiet=True).target).state_dict()
    half, full = (AutoModelForCausalLM.from_pretrained(outs[n]).state_dict() for n in ("half", "point"))
    k = next(k for k in target if "q_proj" in k)
    np.testing.assert_allclose(half[k].numpy(), (target[k] + 0.5 * (full[k] - target[k])).numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(full[k].numpy(), target[k].numpy())
    _reproduces(tmp, path, outs["half"], row, capsys)


@pytest.mark.parametrize("args, field", [
    (["--lambdas", "1.5"], "--lambdas"), (["--lambdas", "0"], "--lambdas"), (["--lambdas", "half"], "--lambdas"),
    (["--lambdas", "0.5", "0.5"], "--lambdas"), (["--points", "0"], "--points"), (["--point", "nosuch"], "--point"),
    (["--point", "a@b"], "TRIAL[@STEP]"), (["--points", "2", "--point", "x"], "--points"),
])
def test_densify_bad_lambdas_and_point_ids_exit_2_with_one_line(lora_sweep, capsys, args, field):
    tmp, path, uri, report = lora_sweep
    code, err = _cli(capsys, "densify", "lora", *args, "--tracking-uri", uri)
    assert code == 2 and err.count("\n") == 1 and field in err and "not allowed" in err, err


def _cli_out(capsys, *args):
    from raysweep.cli import main

    code = main(list(args))
    got = capsys.readouterr()
    return code, got.out if code == 0 else got.err
