"""The study's noise floor (issue 27, item 4): what forget quality and utility do models get that
either forgot perfectly by construction or know nothing?

    python jobs/study/calibrate.py [--offset 0] [--tracking-uri sqlite:///study_runs/mlflow.db]

Per author subset of ``jobs/study/method20.yaml``, evaluated exactly as a trial's final point
(the job's Evaluator, against the job's retain reference, seed 0):
  target            the model before unlearning (the sweep's starting point)
  reference_seed0   the retain reference itself (KS of identical truth ratios: FQ 1 by construction)
  reference_seed1   a second retain reference: same rows (retain + prior knowledge), same tokenizer,
                    another seed for its initial weights and data order - a model that never saw
                    the forget set, as an ideal unlearned model would be; its FQ against the first
                    reference is the best an unlearned model can be told apart from "ideal"
  collapsed         the untrained base model (same architecture and tokenizer, random weights):
                    a model that has lost everything, the deliberately collapsed end point
For a pretrained base (``--job jobs/study/smollm2.yaml``, issue 27 item 5) a second seed of the
reference would start from the same pretrained weights (only the data order differs) and "random
weights" is no model anyone unlearns towards, so it evaluates instead:
  reference_seed0   the retain reference
  untuned           the pretrained base, never fine-tuned on TOFU: what the forget author's answers
                    cost a model that never learnt them (the target must be well below it)
Each becomes one MLflow run in experiment ``study-calibration`` (tag ``raysweep.sweep`` =
``study-calibration-o<offset>``, or ``<job name>-calibration-o<offset>`` for a pretrained base;
``raysweep.calibration`` = the model), which
``make_tables.py --export`` writes to results/study_points.csv. The second reference is cached
under ``<cache_dir>/calibration/<prepare key>/reference_seed1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from raysweep.spec import load_job  # noqa: E402

EXPERIMENT = "study-calibration"
CALIBRATION_TAG = "raysweep.calibration"


def second_reference(job, data, key: str, seed: int) -> Path:
    """The retain reference trained again with another seed (initial weights and data order)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from raysweep.data.collate import QACollator
    from raysweep.models.build import load_tokenizer
    from raysweep.models.prepare import _base_model_dir, finetune, prior_rows

    out = job.cache_dir / "calibration" / key / f"reference_seed{seed}"
    if (out / "config.json").exists():
        return out
    base, tok_dir = _base_model_dir(job, data)  # the seed-0 base: the same tokenizer as every model here
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(base))
    p = job.prepare
    finetune(model, QACollator.for_job(job, tokenizer, seed=seed), data.retain + prior_rows(job), epochs=p.epochs,
             batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, warmup_ratio=p.warmup_ratio, seed=seed,
             label=f"reference seed {seed}")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def calibrate(offset: int, tracking_uri: str, job_path: Path) -> None:
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import TINY, _base_model_dir, cached_preparation, load_job_data, prepare_key
    from raysweep.sweep import tracking

    job = load_job(job_path, {"data.subset.offset": offset})
    data = load_job_data(job)
    pretrained = job.model.base != TINY
    ref1 = None if pretrained else second_reference(job, data, prepare_key(job, data), seed=1)
    # The target and the first reference are the sweeps' (run_all.sh stage paired prepares them).
    while (prepared := cached_preparation(job, data)) is None:
        print(f"o{offset}: waiting for the sweeps' prepared target and reference", flush=True)
        time.sleep(30)
    tokenizer = load_tokenizer(prepared.tokenizer)
    ev = Evaluator(job, data, tokenizer, QACollator.for_job(job, tokenizer, seed=job.unlearn.seed),
                   prepared.retain_reference)
    base = _base_model_dir(job, data)[0]
    if pretrained:  # the target's own evaluation is the sweeps' (their parent's target/* metrics)
        models = {"reference_seed0": prepared.retain_reference, "untuned": base}
    else:
        models = {"target": prepared.target, "reference_seed0": prepared.retain_reference, "reference_seed1": ref1,
                  "collapsed": base}
    c = tracking.client(tracking_uri)
    exp = tracking.experiment_id(c, EXPERIMENT)
    sweep = f"{job.name}-calibration-o{offset}" if pretrained else f"{EXPERIMENT}-o{offset}"
    for name, path in models.items():
        t0 = time.time()
        scores = ev(load_causal_lm(path, job.model.dtype), progress=False)
        run = c.create_run(exp, tags={tracking.SWEEP_TAG: sweep, CALIBRATION_TAG: name}, run_name=f"{sweep}-{name}")
        c.log_param(run.info.run_id, "data.subset.offset", offset)
        tracking.log_metrics(c, run.info.run_id, {f"objective/{k}": v for k, v in scores.items()
                                                  if isinstance(v, (int, float))})
        c.set_terminated(run.info.run_id)
        print(f"o{offset} {name:<16} FQ {scores.get('forget_quality')!r:<24} MU {scores.get('model_utility')!r} "
              f"forget answer loss {scores.get('forget_answer_loss')!r} "
              f"({time.time() - t0:.0f}s)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--offset", type=int, nargs="+", default=[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "study" / "method20.yaml"))
    ap.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'study_runs' / 'mlflow.db'}")
    args = ap.parse_args(argv)
    for o in args.offset:
        calibrate(o, args.tracking_uri, Path(args.job))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
