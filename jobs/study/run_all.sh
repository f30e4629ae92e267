#!/usr/bin/env bash
# Every sweep of the study (issue 13), one `raysweep launch` at a time, in priority order.
#   bash jobs/study/run_all.sh [STAGE...]      stages: method0 geffect objective method180 method10 method2 sampler grid
#                                             paired (or paired-s0, -s1, -s2; LRS=<lr points>, default 6; OFFSETS="0 180")
#                                             extended (extended-sago: SAGO and GradDiff only; SEEDS=0) long tuned (TRIALS=8)
#                                             method20 (or method20-o0, method20-o180) objective20 (or -o0, -o180; BEST=<method>)
#                                             smollm2 (SmolLM2-135M-Instruct with LoRA; METHODS2="graddiff sago ngdiff mgda")
# Tracking: $STUDY_DB (default study_runs/mlflow.db), storage study_runs/runs. A sweep already
# finished under the same name is skipped, so an interrupted study continues where it stopped.
# Then:  python jobs/study/make_tables.py
set -u
cd "$(dirname "$0")/../.."
# One torch thread per process: `launch` prepares the target and reference in its own process at
# torch's default thread count, and on a shared, oversubscribed 2-core CPU two threads ran the tiny
# model's fine-tuning 8x slower than one (0.17 vs 1.36 steps/s, 2026-12-06). Trials use
# train.threads_per_worker (1) already.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
ROOT=$PWD
DB=${STUDY_DB:-$ROOT/study_runs/mlflow.db}
mkdir -p "$(dirname "$DB")" study_runs/logs
PY=${PYTHON:-python}
JOB=jobs/study/method.yaml
SPACES=../../search_spaces/study      # relative to the job file

launch() {  # NAME [--set k=v ...]
  local name=$1; shift
  if grep -qs "^$name\$" study_runs/done.txt; then echo "skip $name (done)"; return; fi
  # A launch of the same name still running (a restarted study): wait for it, then count it.
  local pid; pid=$(pgrep -f "launch $JOB --name $name " | head -1)
  if [ -n "$pid" ]; then
    while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    grep -q "sweep $name finished" "study_runs/logs/$name.log" && { echo "$name" >> study_runs/done.txt; return; }
  fi
  echo "$(date -u +%H:%M:%S) launch $name"
  local try ok=1
  for try in 1 2; do  # a second try when Ray's node did not start in time (a loaded, shared CPU)
    $PY -m raysweep.cli launch "$JOB" --name "$name" --tracking-uri "sqlite:///$DB" \
      --storage "$ROOT/study_runs/runs" "$@" > "study_runs/logs/$name.log" 2>&1 && { ok=0; break; }
    grep -q "timed out during startup" "study_runs/logs/$name.log" || break
    echo "$(date -u +%H:%M:%S) retry $name (Ray start-up timed out)"
  done
  if [ $ok = 0 ]; then
    echo "$name" >> study_runs/done.txt
    report "$name"
  else
    echo "FAILED $name (study_runs/logs/$name.log)"; tail -3 "study_runs/logs/$name.log"
  fi
}

report() {  # NAME: the sweep's HTML + Markdown summary, from MLflow alone
  $PY -m raysweep.cli report "$1" --tracking-uri "sqlite:///$DB" --out "study_runs/reports/$1" \
    > "study_runs/logs/$1.report.log" 2>&1 || echo "report of $1 failed (study_runs/logs/$1.report.log)"
}

METHODS="graddiff sago pcgrad_r ngdiff gru mgda"
FORGETS=${FORGETS:-npo ga simnpo}   # method20: the forget objectives (FORGETS=... to split a run)
method_study() {  # OFFSET
  for m in $METHODS; do
    launch "study-method-$m-o$1" --set "sweep.search_space=$SPACES/$m.yaml" --set "data.subset.offset=$1"
  done
}

round3() {  # OFFSETS FORGETS METHODS: round 3's sweeps (jobs/study/method20.yaml), objective outer
  # so that a partial run still has both subsets of each objective
  local o f m
  for f in $2; do
    for o in $1; do
      for m in $3; do
        launch "study-method20-$m-$f-o$o" --set "sweep.search_space=$SPACES/lr_high/$m.yaml" \
          --set "unlearn.forget={name: $f}" --set "data.subset.offset=$o"
      done
    done
  done
}

stage() {
  case $1 in
    method0) method_study 0 ;;
    method180) method_study 180 ;;
    method10) method_study 10 ;;
    method2)  # second round on o0: the same budget in the lr range where 12 steps forget something
      for m in $METHODS; do
        launch "study-method2-$m-o0" --set "sweep.search_space=$SPACES/lr_high/$m.yaml"
      done ;;
    geffect)  # one run each, G-effect every 2 steps per decoder layer (4 groups = 4 layers);
      # the objective with GradDiff's retain term (weight 1), then alone (weight 0)
      for v in "" _alone; do
        for f in ga npo wga; do
          launch "study-geffect-$f${v//_/-}" --set "sweep.search_space=$SPACES/geffect_$f$v.yaml" \
            --set sweep.num_trials=1 --set eval.geffect_every=2 --set eval.geffect_block_groups=4 --set unlearn.steps=24
        done
      done ;;
    objective)
      for f in ga npo wga tnpo wtnpo; do
        launch "study-objective-$f-graddiff" --set "sweep.search_space=$SPACES/objective_$f.yaml"
      done ;;
    sampler)  # same space and budget for every sampler; seeds outer so partial runs stay balanced.
      # 14 trials: Optuna's TPE and GP sample at random for their first 10 (n_startup_trials).
      for s in 0 1 2; do
        for smp in random tpe gp nsga2; do
          launch "study-sampler-$smp-s$s" --set "sweep.search_space=$SPACES/sampler.yaml" \
            --set "sweep.sampler=$smp" --set "sweep.seed=$s" --set sweep.num_trials=14
        done
      done ;;
    method20|method20-o0|method20-o180)  # round 3 (jobs/study/method20.yaml): 20 authors, forget 2, 40 questions;
      # every method x forget objective, the same budget (the job's num_trials), lr in [5e-4, 5e-3].
      # Offsets 0 and 180 only: TOFU has perturbed answers for authors 0-19 and 180-199 alone.
      local JOB=jobs/study/method20.yaml offsets=${1#method20-o}
      [ "$offsets" = method20 ] && offsets="0 180"
      round3 "$offsets" "$FORGETS" "$METHODS" ;;
    objective20|objective20-o0|objective20-o180)  # round 3's objective study: the token-weighted objectives under $BEST (round 3's best
      # synthesis method: make_tables.py --only method20 names it), same job and budget as method20,
      # whose GA and NPO sweeps are the comparison
      [ -n "${BEST:-}" ] || { echo "objective20: set BEST=<method> (make_tables.py --only method20 names it)"; exit 2; }
      local JOB=jobs/study/method20.yaml offsets=${1#objective20-o}
      [ "$offsets" = objective20 ] && offsets="0 180"
      round3 "$offsets" "wga tnpo wtnpo" "$BEST" ;;
    paired|paired-s0|paired-s1|paired-s2)  # issue 27's paired design: every method with its default weights on the
      # same deterministic lr grid ($LRS log-spaced points in [5e-4, 1e-2], search_spaces/study/paired/), the same
      # steps, NPO forget, both 20-author subsets; unlearn.seed (the unlearning data order) outer, so that a
      # partial run has every method at each finished seed
      local JOB=jobs/study/method20.yaml seeds=${1#paired-s} s o m
      [ "$seeds" = paired ] && seeds="0 1 2"
      for s in $seeds; do
        for o in ${OFFSETS:-0 180}; do
          for m in $METHODS; do
            launch "study-paired-$m-o$o-s$s" --set "sweep.search_space=$SPACES/paired/$m.yaml" \
              --set sweep.sampler=grid --set "sweep.grid_points=${LRS:-6}" --set "sweep.num_trials=${LRS:-6}" \
              --set "unlearn.forget={name: npo}" --set "data.subset.offset=$o" --set "unlearn.seed=$s"
          done
        done
      done ;;
    extended|extended-sago)  # issue 27 item 3, SAGO at a budget where it forgets: 48 steps (4x the paired design's),
      # lr grid 6 log-spaced points in [1e-3, 3e-2] (search_spaces/study/extended/), evaluated every 12 steps
      # (each evaluation a point), NPO forget, unlearning data-order seeds $SEEDS (default 0), both subsets. SAGO
      # and GradDiff first (the claim's pair), then the others; extended-sago runs the pair alone.
      local JOB=jobs/study/method20.yaml o m s ms="sago graddiff"
      [ "$1" = extended ] && ms="sago graddiff ngdiff pcgrad_r gru mgda"
      for s in ${SEEDS:-0}; do
        for m in $ms; do
          for o in ${OFFSETS:-0 180}; do
            launch "study-extended-$m-o$o-s$s" --set "sweep.search_space=$SPACES/extended/$m.yaml" \
              --set sweep.sampler=grid --set sweep.grid_points=6 --set sweep.num_trials=6 \
              --set unlearn.steps=48 --set eval.every=12 \
              --set "unlearn.forget={name: npo}" --set "data.subset.offset=$o" --set "unlearn.seed=$s"
          done
        done
      done ;;
    long)  # issue 27 item 3, SAGO's long budget: SAGO and GradDiff for 144 steps (12x the paired design's) at the
      # 3 lrs in [5e-4, 2e-3] (search_spaces/study/long/), where 48 steps kept most of the utility, evaluated every 24
      # steps; NPO forget, data-order seed 0, both subsets
      local JOB=jobs/study/method20.yaml o m
      for m in sago graddiff; do
        for o in ${OFFSETS:-0 180}; do
          launch "study-long-$m-o$o-s0" --set "sweep.search_space=$SPACES/long/$m.yaml" \
            --set sweep.sampler=grid --set sweep.grid_points=3 --set sweep.num_trials=3 \
            --set unlearn.steps=144 --set eval.every=24 \
            --set "unlearn.forget={name: npo}" --set "data.subset.offset=$o" --set unlearn.seed=0
        done
      done ;;
    tuned)  # issue 27 item 2, the tuned comparison: every method searches its own full space (round 3's
      # search_spaces/study/lr_high/<method>.yaml: its weights and the lr in [5e-4, 5e-3]) with the job's TPE
      # sampler (sweep.seed 0) for the same $TRIALS trials (default 8), 12 steps, NPO forget, both subsets
      local JOB=jobs/study/method20.yaml o m
      for o in ${OFFSETS:-0 180}; do
        for m in $METHODS; do
          launch "study-tuned-$m-o$o" --set "sweep.search_space=$SPACES/lr_high/$m.yaml" \
            --set sweep.sampler=tpe --set "sweep.num_trials=${TRIALS:-8}" \
            --set "unlearn.forget={name: npo}" --set "data.subset.offset=$o" --set unlearn.seed=0
        done
      done ;;
    smollm2)  # issue 27 item 5: SmolLM2-135M-Instruct with LoRA (jobs/study/smollm2.yaml), one sweep per method, each
      # the lrs of search_spaces/study/smollm2/<method>.yaml on a grid, NPO forget, data-order seed 0. One trial at a
      # time on both cores: a 135M model's steps are compute-bound, so two threads beat one on a quiet CPU.
      local JOB=jobs/study/smollm2.yaml m n
      export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
      # The target and the reference first, then the models that were not unlearned (the untuned SmolLM2 and the
      # reference: jobs/study/calibrate.py), so that whether the target learnt the forget author is known early.
      $PY -m raysweep.cli prepare "$JOB" > study_runs/logs/smollm2-prepare.log 2>&1 \
        || { echo "FAILED prepare (study_runs/logs/smollm2-prepare.log)"; return; }
      if ! grep -qs "^study-smollm2-calibration\$" study_runs/done.txt; then
        $PY jobs/study/calibrate.py --job "$JOB" --offset 15 --tracking-uri "sqlite:///$DB" \
          > study_runs/logs/smollm2-calibration.log 2>&1 && echo study-smollm2-calibration >> study_runs/done.txt
      fi
      for m in ${METHODS2:-graddiff sago ngdiff mgda}; do
        n=$(grep -o "choice: \[[^]]*\]" "search_spaces/study/smollm2/$m.yaml" | tr -cd , | wc -c)
        launch "study-smollm2-$m-o15-s0" \
          --set "sweep.search_space=$SPACES/smollm2/$m.yaml" --set "sweep.num_trials=$((n + 1))"
      done ;;
    grid)  # the sampler study's baseline: every point of a 42-point grid (3 x 14) on the same space,
      # lr 7 log-spaced points x NPO beta 3 x SAGO gamma 2 x SAGO alpha 1 (the middle of its range)
      launch "study-sampler-grid-s0" --set "sweep.search_space=$SPACES/sampler.yaml" --set sweep.sampler=grid \
        --set "sweep.grid_points={unlearn.lr: 7, forget.npo.beta: 3, method.sago.gamma: 2, method.sago.alpha: 1}" \
        --set sweep.num_trials=42 ;;
    *) echo "unknown stage $1"; exit 2 ;;
  esac
}

for s in "${@:-method0 geffect objective method180 method10 method2 sampler}"; do
  for one in $s; do stage "$one"; done
done
