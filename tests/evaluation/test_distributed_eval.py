"""Evaluation split across data-parallel ranks gives exactly the numbers of one process.

Each rank scores its share of fixed, length-sorted batches (raysweep/evaluation/batching.py) and
the results are gathered, so the arithmetic of every row is the same whatever the rank count."""

import pytest

from raysweep.distributed.local import run_ranks
from raysweep.evaluation.batching import Shard, map_batches, plan_batches

from ..conftest import SHARED_DATA, tiny_job


def evaluate_on_ranks(rank, world, job_path, benchmarks):
    import torch

    from raysweep.engine.trial import build_trial
    from raysweep.evaluation.batching import torch_distributed_shard
    from raysweep.spec import load_job

    torch.manual_seed(0)
    parts = build_trial(load_job(job_path))
    parts.evaluator.benchmarks = list(benchmarks)
    return parts.evaluator(parts.model, progress=False, shard=torch_distributed_shard())


@pytest.fixture(scope="module")
def job_path(tmp_path_factory, tofu_dir, shared_cache):
    import yaml

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path = tiny_job(tmp_path_factory.mktemp("deval"), tofu_dir, shared_cache)
    raw = yaml.safe_load(path.read_text())
    # Odd row counts and a batch size that splits them unevenly across the ranks.
    raw["eval"] = {"max_questions": 13, "max_new_tokens": 6, "batch_size": 4, "mcq_questions": 9,
                   "mcq_data": str(SHARED_DATA)}
    path.write_text(yaml.safe_dump(raw))
    prepare(load_job(path))
    return path


def test_two_ranks_give_the_one_rank_metrics_exactly(job_path):
    benchmarks = ["qa", "tofu", "mmlu"]
    one = run_ranks(evaluate_on_ranks, 1, str(job_path), benchmarks)[0]
    two = run_ranks(evaluate_on_ranks, 2, str(job_path), benchmarks)
    assert {"forget_rougeL_recall", "model_utility", "forget_quality", "mmlu_acc_sub9", "mia_loss_auc"} <= set(one)
    assert two[0] == two[1], "every rank ends with the gathered metrics"
    assert two[0] == one  # exactly: same batches, same arithmetic


def test_batches_do_not_depend_on_the_rank_count():
    lengths = [5, 1, 4, 1, 3, 9, 2]
    plan = plan_batches(lengths, 3)
    assert plan == [[1, 3, 6], [4, 2, 0], [5]]  # shortest first, ties in input order

    def fn(batch):
        return [x * 10 for x in batch]

    alone = map_batches(lengths, 3, fn, length=lambda x: x)
    assert alone == [x * 10 for x in lengths]
    # Two "ranks" in one process: each computes its share; gather joins them in rank order.
    shares = {}

    def gather_from(rank):
        def gather(obj):
            shares[rank] = obj
            return [shares.get(0, []), shares.get(1, [])]
        return gather

    map_batches(lengths, 3, fn, length=lambda x: x, shard=Shard(0, 2, gather_from(0)))
    joined = map_batches(lengths, 3, fn, length=lambda x: x, shard=Shard(1, 2, gather_from(1)))
    assert [b for b, _ in shares[0]] == [0, 2] and [b for b, _ in shares[1]] == [1]
    assert joined == alone
