"""``raysweep densify`` (issue 26, part 2) on a real small sweep (local Ray, Optuna, sqlite MLflow,
checkpoints in the sweep's storage): each interpolation is the segment target -> point computed
independently here with numpy, logged as a point of the sweep, on the recomputed front with the
hypervolume re-derived here, exportable and loadable with ``from_pretrained``; and between
neighbouring front points. Slow (a sweep of its own); the default suite densifies the LoRA sweep
of ``test_export.py``."""

import json

import numpy as np
import pytest
import yaml

from ..conftest import tiny_job
from .test_sweep import launch_job

pytestmark = pytest.mark.slow

OBJECTIVES = {"forget_answer_loss": "max", "retain_answer_loss": "min"}


@pytest.fixture(scope="module")
def densified(tmp_path_factory, tofu_dir, shared_cache):
    tmp = tmp_path_factory.mktemp("densify")
    job = yaml.safe_load(tiny_job(tmp, tofu_dir, shared_cache, steps=3, batch_size=4).read_text())
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"unlearn": {"lr": {"choice": [1e-3, 6e-2]}}}))
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8}
    job["sweep"] = {"search_space": str(space), "objectives": OBJECTIVES, "sampler": "grid", "num_trials": 2,
                    "max_concurrent": 2, "checkpoint": "uri"}
    path, uri, before = launch_job(tmp, job, "job.yaml", "dense")
    return tmp, path, uri, before


def _cli(capsys, *args):
    from raysweep.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def hv2(points, directions, ref):
    """2-D hypervolume re-derived: both objectives turned to "higher is better", then the
    staircase area above the reference point, one slab per distinct first value, each as high as
    the best second value at or beyond it."""
    sign = [1.0 if d == "max" else -1.0 for d in directions]
    pts = [(sign[0] * a, sign[1] * b) for a, b in points]
    r0, r1 = sign[0] * ref[0], sign[1] * ref[1]
    pts = [(a, b) for a, b in pts if a > r0 and b > r1]
    xs = sorted({r0, *(a for a, _ in pts)})
    return sum((x1 - x0) * (max(b for a, b in pts if a >= x1) - r1) for x0, x1 in zip(xs, xs[1:]))


def test_densify_logs_the_segment_target_to_point_as_points_of_the_sweep(densified, capsys):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM
    import torch

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp, path, uri, before = densified
    code, out, err = _cli(capsys, "densify", "dense", "--lambdas", "0.5", "0.25", "--json", "--tracking-uri", uri)
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    chosen = [r for r in before["front"]]
    assert sorted(summary["points"]) == sorted(r["trial_id"] for r in chosen)
    assert len(summary["evaluated"]) == 2 * len(chosen)

    after = pareto_report(tracking.client(uri), uri, "dense")
    interp = {r["trial_id"]: r for r in after["trials"] if r["kind"] == "interpolated"}
    assert set(interp) == {f"i-{r['trial_id']}-l{lam:g}" for r in chosen for lam in (0.25, 0.5)}
    assert after["n_finished"] == before["n_finished"] == 2 and after["n_interpolated"] == len(interp)

    # The worked example: theta = target + 0.5 * (point - target), here in numpy from the files.
    job = load_job(path)
    target_dir = prepare(job, quiet=True).target
    point = chosen[0]
    row = interp[f"i-{point['trial_id']}-l0.5"]
    assert row["parents"] == ["target", point["trial_id"]] and row["lambda"] == 0.5
    p = load_file(f"{point['checkpoint_uri']}/model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(target_dir)
    state = model.state_dict()
    t = {k: v.numpy() for k, v in state.items()}  # the target's weights (tied ones included)
    mine = {k: torch.from_numpy(t[k] + np.float32(0.5) * (p[k] - t[k])) for k in state}
    assert any(not np.allclose(p[k], t[k]) for k in p)  # the trial moved the weights
    model.load_state_dict(mine)
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_tokenizer
    from raysweep.models.prepare import load_job_data

    tok = load_tokenizer(target_dir)
    metrics = Evaluator(job, load_job_data(job), tok, QACollator.for_job(job, tok))(model, progress=False)
    for k in OBJECTIVES:
        assert row["objectives"][k] == pytest.approx(metrics[k], rel=1e-5), k
    # its checkpoint is inside the sweep's storage; weights only
    assert row["checkpoint_uri"].startswith(str(tmp / "runs")) and "densify" in row["checkpoint_uri"]

    # The hypervolume after, over every point, against the reference point before (the nadir of the
    # trials: interpolations never move it), re-derived here.
    ref = [before["reference_point"][k] for k in OBJECTIVES]
    assert [after["reference_point"][k] for k in OBJECTIVES] == ref
    every = [(r["objectives"]["forget_answer_loss"], r["objectives"]["retain_answer_loss"]) for r in after["trials"]]
    assert summary["hypervolume_after"] == pytest.approx(hv2(every, list(OBJECTIVES.values()), ref), rel=1e-9)
    assert summary["hypervolume_before"] == pytest.approx(hv2([
        (r["objectives"]["forget_answer_loss"], r["objectives"]["retain_answer_loss"]) for r in before["trials"]],
        list(OBJECTIVES.values()), ref))
    assert summary["hypervolume_after"] >= summary["hypervolume_before"]
    # the runs carry the front marks like any trial's
    c = tracking.client(uri)
    marks = {c.get_run(r["run_id"]).data.tags.get("raysweep.pareto") for r in interp.values()}
    assert marks <= {"front", "dominated"} and marks
    assert c.get_run(row["run_id"]).data.tags["raysweep.kind"] == "interpolated"

    # densifying again adds nothing already there
    code, out, err = _cli(capsys, "densify", "dense", "--lambdas", "0.5", "--json", "--tracking-uri", uri)
    assert code == 0 and json.loads(out)["evaluated"] == [], err[-2000:]


def test_an_interpolated_point_exports_and_reproduces_its_metrics(densified, capsys):
    from transformers import AutoModelForCausalLM

    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp, path, uri, before = densified
    point = before["front"][0]
    code, out, err = _cli(capsys, "densify", "dense", "--point", point["trial_id"], "--lambdas", "0.75",
                          "--tracking-uri", uri)
    assert code == 0, err[-3000:]
    assert "hypervolume" in out and "evaluation time" in out and "front after" in out
    after = pareto_report(tracking.client(uri), uri, "dense")
    row = next(r for r in after["trials"] if r["trial_id"] == f"i-{point['trial_id']}-l0.75")
    dest = tmp / "exported"
    code, out, err = _cli(capsys, "export", "dense", row["trial_id"], str(dest), "--tracking-uri", uri)
    assert code == 0, err[-2000:]
    AutoModelForCausalLM.from_pretrained(dest)
    code, out, err = _cli(capsys, "eval", str(dest), "--job", str(path), "--benchmark", "qa", "--out", str(tmp / "e.json"))
    assert code == 0, err[-2000:]
    again = json.loads((tmp / "e.json").read_text())["metrics"]
    for k, v in row["objectives"].items():
        assert again[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_neighbouring_front_points_sharing_the_target_are_interpolated_too(densified, capsys):
    from safetensors.numpy import load_file

    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp, path, uri, before = densified
    front = sorted(before["front"], key=lambda r: r["objectives"]["forget_answer_loss"])
    assert len(front) == 2, [r["objectives"] for r in before["trials"]]  # the two learning rates trade off
    a, b = front
    # named: the test above may have put interpolated points on the front that dominate one of them
    code, out, err = _cli(capsys, "densify", "dense", "--point", a["trial_id"], "--point", b["trial_id"],
                          "--neighbours", "--lambdas", "0.5", "--tracking-uri", uri)
    assert code == 0, err[-3000:]
    after = pareto_report(tracking.client(uri), uri, "dense")
    row = next(r for r in after["trials"] if r["trial_id"] == f"i-{a['trial_id']}-{b['trial_id']}-l0.5")
    assert row["parents"] == [a["trial_id"], b["trial_id"]]
    wa, wb = (load_file(f"{r['checkpoint_uri']}/model.safetensors") for r in (a, b))
    mid = load_file(f"{row['checkpoint_uri']}/model.safetensors")
    assert set(mid) == set(wa)
    for k in wa:
        np.testing.assert_allclose(mid[k], wa[k] + np.float32(0.5) * (wb[k] - wa[k]), rtol=0, atol=1e-7)
