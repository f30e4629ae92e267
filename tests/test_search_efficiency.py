"""``benchmarks/search_efficiency.py --pool K`` (issue 26, part 1): K recorded sweeps replayed as one
sweep of K times the trials. With the random sampler every trial's configuration is its own draw,
so the pool is a sweep of that size: its FIFO replay must train every trial of every recording and
reach the hypervolume of all their points, and a synchronous scheduler must count all its trials."""

import subprocess
import sys

import numpy as np
import pytest

from raysweep.sweep.pareto import hypervolume

from .sweep.schedulers.test_mo_asha_sync import FORGET_RETAIN, REPO, _bench, _random_trials


def _recording(seed: int, n: int = 8) -> tuple:
    trials = _random_trials(np.random.default_rng(seed), n, 8, 4)
    configs = [{"method": ("graddiff", "sago")[i % 2]} for i in range(n)]
    ties = [[(0.5,)] * len(t) for t in trials]
    return trials, dict(FORGET_RETAIN), [1.0, 0.0], configs, ties


def test_a_pool_of_recorded_sweeps_replays_as_one_sweep_of_all_their_trials():
    bench = _bench()
    parts = [_recording(1), _recording(2), _recording(3)]
    trials, objectives, ref, configs, ties = bench.pooled(parts)
    assert trials == parts[0][0] + parts[1][0] + parts[2][0]
    assert configs == parts[0][3] + parts[1][3] + parts[2][3] and len(ties) == 24
    _, _, spent, hv = bench.replay(trials, objectives, ref, None, 32)
    assert spent == 24 * 32
    union = np.array([v for t in trials for _, v, _ in t])
    assert hv == pytest.approx(hypervolume(union, list(objectives.values()), ref), rel=1e-12)
    # a synchronous arm's rung 0 waits for all 24 trials and its budget is a share of all of them
    arm = {"grace_period": 4, "rung_levels": [4, 16], "reduction_factor": 2.5, "promotion": "synchronous",
           "stratify": "method", "budget": 0.48}
    _, _, spent, _ = bench.replay(trials, objectives, ref, arm, 32, configs=configs)
    alone = sum(bench.replay(p[0], objectives, ref, arm, 32, configs=p[3])[2] for p in parts)
    assert 0.4 * 24 * 32 < spent <= 0.48 * 24 * 32 and spent != alone


def test_recordings_of_other_objectives_or_reference_points_are_not_pooled():
    bench = _bench()
    other = _recording(2)
    with pytest.raises(SystemExit, match="--pool: .*reference points"):
        bench.pooled([_recording(1), (other[0], other[1], [0.9, 0.0], other[3], other[4])])
    with pytest.raises(SystemExit, match="--pool"):
        bench.pooled([_recording(1), (other[0], {"retain": "max", "forget": "min"}, *other[2:])])


@pytest.mark.parametrize("flags, said", [
    (["--pool", "2", "--seeds", "0", "1", "2"], "--pool: 2 is not allowed (a whole number >= 1 that divides the 3"),
    (["--pool", "0"], "--pool: 0 is not allowed"),
    (["--pool", "2", "--seeds", "0", "1", "--validate", "FIFO"], "--validate: a pooled sweep was never run as one"),
])
def test_a_pool_that_does_not_fit_the_seeds_is_refused_in_one_line(flags, said, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_efficiency.py"), "--work", str(tmp_path),
                          *flags], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and said in res.stderr and not list(tmp_path.iterdir())
    assert len(res.stderr.strip().splitlines()[-1]) > len(said)


@pytest.mark.parametrize("arm, first", [("FIFO, first half of the trials", 12), ("FIFO, first quarter of the trials", 6)])
def test_the_fewer_trials_baselines_are_fifo_on_the_first_trials(arm, first):
    """A sweep planned smaller: FIFO on the searcher's first trials (a quarter of 96 beats most
    schedulers where the space is small and FIFO's front fills early, BENCHMARKS.md)."""
    bench = _bench()
    recording = bench.pooled([_recording(1, 12), _recording(2, 12)])
    _, _, spent, hv = bench.replay_arm(arm, recording, 32)
    assert spent == first * 32
    kept = np.array([v for t in recording[0][:first] for _, v, _ in t])
    assert hv == pytest.approx(hypervolume(kept, list(FORGET_RETAIN.values()), [1.0, 0.0]), rel=1e-12)
    assert bench.replay_arm("FIFO", recording, 32)[2] == 24 * 32
