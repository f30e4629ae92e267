"""Job YAML -> validated ``JobSpec``. Every error is one line: field, bad value, what is allowed.

Why one module: it is the job's schema, one pydantic model per YAML section in file order, plus
the loader that turns pydantic's errors into one line. Split, a reader would lose the one place
that shows every field a job may hold (tests/matrix.py and docs/matrix.md check that list)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysweep.registry import UnknownNameError
from raysweep.validation import HyperparameterError


class JobSpecError(ValueError):
    """A bad job file; ``str()`` is a single line."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAYSWEEP_CACHE", Path.home() / ".cache" / "raysweep"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubsetSpec(_Strict):
    authors: int = Field(20, gt=0)
    forget_authors: int = Field(2, gt=0)
    # First author kept (authors offset..offset+authors-1; the last forget_authors are forgotten).
    offset: int = Field(0, ge=0)


class DataSpec(_Strict):
    benchmark: Literal["tofu", "muse", "corpus"] = "tofu"
    path: Path
    forget_split: str = "forget10"
    subset: Optional[SubsetSpec] = None
    # MUSE: how many forget-corpus articles to train/unlearn on (None = all 889).
    n_forget_texts: Optional[int] = Field(None, gt=0)
    max_length: int = Field(128, ge=16)
    # --- corpus unlearning (benchmark: corpus; issue 10): JSON Lines {"text"} files in data.path ---
    forget_file: str = "forget.jsonl"
    retain_file: str = "retain.jsonl"
    n_retain_texts: Optional[int] = Field(None, gt=0)  # n_forget_texts caps the forget file
    chunk_chars: Optional[int] = Field(None, gt=0)  # None: 4 x max_length
    heldout_fraction: float = Field(0.1, ge=0, lt=1)  # last documents of each file, for perplexity

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError("directory does not exist (a folder with the benchmark's jsonl files)")
        return v

    @model_validator(mode="after")
    def _files(self):
        from raysweep.data.tofu import FORGET_SPLITS, RETAIN_FOR

        if self.benchmark == "corpus":
            for key in ("forget_file", "retain_file"):
                if not (self.path / getattr(self, key)).is_file():
                    raise ValueError(f"@data.{key}: {getattr(self, key)!r} is not allowed "
                                     f"(no such file in {str(self.path)!r}; JSON Lines {{\"text\"}})")
            return self
        if self.benchmark == "muse":
            needed = ["raw_forget.jsonl", "privleak_retain2.jsonl", "privleak_holdout.jsonl"]
        elif self.subset is not None:
            needed = ["full.jsonl"]
        elif self.forget_split in FORGET_SPLITS:
            needed = [f"{self.forget_split}.jsonl", f"{RETAIN_FOR[self.forget_split]}.jsonl"]
        else:
            raise ValueError(
                f"@data.forget_split: {self.forget_split!r} is not allowed (allowed: {', '.join(FORGET_SPLITS)})"
            )
        for name in needed:
            if not (self.path / name).is_file():
                raise ValueError(
                    f"@data.path: {str(self.path)!r} lacks the file {name!r} (a {self.benchmark.upper()} data folder)"
                )
        return self


class TinyModelSpec(_Strict):
    hidden_size: int = Field(256, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(768, gt=0)
    vocab_size: int = Field(2048, ge=300)
    max_position_embeddings: int = Field(256, gt=0)


class LoraSpec(_Strict):
    """peft LoRA adapters: only they train (and are synthesised); the base stays frozen."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)


class ModelSpec(_Strict):
    # "tiny-llama" (built from a config), "smollm2-135m", a local directory or a hub name.
    base: str = "tiny-llama"
    tiny: TinyModelSpec = TinyModelSpec()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: Optional[LoraSpec] = None  # issue 10
    # Prompt format in prepare, unlearning and evaluation alike (raysweep/data/prompts.py): auto =
    # open-unlearning's chat prompt (system prompt, fixed date) when the tokenizer has a chat
    # template, else plain "Question: ... Answer:"; phi15 is open-unlearning's phi-1.5 format.
    template: Literal["auto", "plain", "phi15", "chat", "llama2", "llama3"] = "auto"
    system_prompt: Optional[str] = None

    @model_validator(mode="after")
    def _tiny_has_no_chat_template(self):
        if self.base == "tiny-llama" and self.template in ("chat", "llama3"):
            raise ValueError(f"@model.template: {self.template!r} is not allowed with model.base 'tiny-llama' "
                             "(its trained tokenizer has no chat template; allowed: auto, plain, phi15, llama2)")
        return self


class PrepareSpec(_Strict):
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    # The retain reference (trained without the forget set) is what TOFU forget quality and MUSE
    # privleak compare against; a job that uses neither can skip training it.
    retain_reference: bool = True
    # Give a model trained from scratch the knowledge TOFU's model utility measures: the
    # real-authors and world-facts QA join the fine-tuning rows of the target and of the retain
    # reference alike (never the unlearning retain set), so all nine utility statistics measure
    # retention of something the model knew. TOFU data only.
    prior_knowledge: bool = False
    # The first N rows of each of the two files (None = all 100 + 117): the rows TOFU evaluation
    # scores are the first eval.max_questions, so a small job can learn just those.
    prior_knowledge_rows: Optional[int] = Field(None, gt=0)


class NamedSpec(BaseModel):
    """``{name: ..., <hyperparameter>: value, ...}``; hyperparameters are checked by the registry."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class UnlearnSpec(_Strict):
    forget: NamedSpec
    retain: list[NamedSpec]
    method: NamedSpec = NamedSpec(name="graddiff")
    steps: int = Field(20, gt=0)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-4, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: Optional[float] = Field(None, gt=0)
    seed: int = 0
    # Paper defaults (raysweep/presets.py), filled in by parse_job under the job's own values.
    preset: Optional[Literal["paper"]] = None

    @field_validator("retain", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _names(self):
        from raysweep.objectives import build_objective
        from raysweep.synthesis import build_synthesis

        _check_named("unlearn.forget", self.forget, build_objective)
        if self.batch_size % self.grad_accum:
            raise ValueError(f"@unlearn.grad_accum: {self.grad_accum} is not allowed (must divide batch_size={self.batch_size})")
        for i, r in enumerate(self.retain):
            _check_named(f"unlearn.retain[{i}]", r, build_objective)
        _check_named("unlearn.method", self.method, build_synthesis)
        return self


BENCHMARKS = ("qa", "tofu", "muse", "wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu", "corpus", "lm_eval")
MCQ_BENCHMARKS = ("wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu")
MUSE_FLAVOURS = ("open-unlearning", "muse")
# How a MUSE ROUGE metric's name says which flavour computed it (eval.muse_flavour).
MUSE_FLAVOUR_SUFFIX = {"open-unlearning": "_ou", "muse": ""}
QuestionCount = Union[int, Literal["all"]]


def subset_label(n: Optional[Union[int, str]]) -> str:
    """The suffix of a metric measured on a subset of a benchmark's questions ("_sub200"): a
    subset's number is never mistaken for, or ranked against, the whole benchmark's."""
    return "" if n is None or n == "all" else f"_sub{n}"


class LmEvalSpec(_Strict):
    """lm-eval-harness tasks run on the trial's model (``eval.benchmarks: [lm_eval]``); each task's
    metrics are logged as ``lm_eval/<task>/<metric>`` (``_sub<limit>`` with a limit)."""

    # raysweep's local tasks (raysweep/evaluation/lm_eval_tasks: raysweep_wmdp_bio, raysweep_mmlu, ...,
    # over eval.mcq_data), tasks in include_path, or lm-eval's own (they need their hub data).
    tasks: list[str] = Field(min_length=1)
    num_fewshot: Optional[int] = Field(None, ge=0)
    limit: Optional[int] = Field(None, gt=0)  # the first N documents of each task
    include_path: Optional[Path] = None  # a folder of one's own lm-eval task YAMLs

    @field_validator("include_path")
    @classmethod
    def _folder(cls, v):
        if v is not None and not v.is_dir():
            raise ValueError("folder does not exist (a folder of lm-eval task YAMLs)")
        return v


class EvalSpec(_Strict):
    # What the trial evaluates before and after; empty = the data's own benchmark.
    benchmarks: list[Literal[BENCHMARKS]] = []
    # Greedy generation cap (open-unlearning's generation default: 200 new tokens).
    max_new_tokens: int = Field(200, gt=0)
    # Token cap of every scored (question, answer) pair in evaluation, separate from the training
    # data.max_length (open-unlearning's QADataset max_length 512); truncations are counted.
    max_length: int = Field(512, ge=16)
    batch_size: int = Field(64, gt=0)
    # Cap on rows per evaluation split (None = every row, the open-unlearning convention).
    max_questions: Optional[int] = Field(None, gt=0)
    # WMDP/MMLU: every question ("all"), or a fixed seeded subset of this many, whose accuracy is
    # named <benchmark>_acc_sub<N>; from this data root; MMLU with this many dev-set exemplars per
    # subject (lm-eval first_n; SAGO uses 5).
    mcq_questions: QuestionCount = "all"
    mmlu_shots: int = Field(0, ge=0, le=5)
    mcq_seed: int = 0
    mcq_data: Optional[Path] = None
    # MUSE KnowMem/VerbMem as open-unlearning reports them (ROUGE-L F1 with stemming, VerbMem
    # against its whole ground truth, 0-1; metric names end in "_ou") or as muse_bench does (no
    # stemming, VerbMem against its first 128 tokens, x 100; the MUSE paper's names).
    muse_flavour: Literal[MUSE_FLAVOURS] = "open-unlearning"
    # Whether MCQ scoring (built-in and lm_eval) adds the tokenizer's special tokens (a BOS on
    # Llama-family tokenizers), as lm-eval's HFLM add_bos_token: False is lm-eval <= 0.4.9.1 (the
    # 0.4.8 that open-unlearning pins), which adds none.
    mcq_add_bos: bool = False
    lm_eval: Optional[LmEvalSpec] = None

    @field_validator("mcq_questions", "during_mcq_questions")
    @classmethod
    def _positive(cls, v):
        if v is not None and v != "all" and v <= 0:
            raise ValueError("a positive number of questions, or 'all'")
        return v
    # G-effect (spec 8.1) every K optimizer steps; 0 = off.
    geffect_every: int = Field(0, ge=0)
    geffect_block_groups: int = Field(3, gt=0)
    # Evaluation along the trajectory: every K steps (0 = only the final evaluation), each a
    # candidate (trial, step) on the sweep's Pareto front with its own checkpoint. A cheaper set of
    # benchmarks, row cap and MCQ subset may be used during the run (default: the final ones).
    every: int = Field(0, ge=0)
    during_benchmarks: list[Literal[BENCHMARKS]] = []
    during_max_questions: Optional[int] = Field(None, gt=0)
    during_mcq_questions: Optional[QuestionCount] = None

    @model_validator(mode="after")
    def _lm_eval_section(self):
        wanted = "lm_eval" in self.benchmarks or "lm_eval" in self.during_benchmarks
        if wanted and self.lm_eval is None:
            raise ValueError("@eval.lm_eval: missing (required by eval.benchmarks lm_eval; {tasks: [...]})")
        if self.lm_eval is not None and not wanted:
            raise ValueError("@eval.lm_eval: a task list is not allowed without lm_eval in eval.benchmarks")
        return self


class TrainSpec(_Strict):
    """Ray Train resources and fault tolerance for one trial."""

    workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    checkpoint_every: int = Field(0, ge=0)  # 0: checkpoint only at the end
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(2, ge=0)
    # One-worker trials run their loop inside the Tune trial (no Ray Train worker group): the same
    # worker code and checkpoints, ~15 s less start-up per trial. False forces a TorchTrainer.
    inline: bool = True
    # --- scale (issue 10) ---
    # Autocast dtype of forward/backward; weights, optimizer state, task buffers and synthesis
    # scalars stay fp32 (spec 3.2 rule 5). fp16 adds dynamic loss scaling.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Activation checkpointing (HF gradient_checkpointing_enable, non-reentrant).
    gradient_checkpointing: bool = False
    # ddp: every rank holds the whole model; fsdp: FSDP2 (fully_shard) shards parameters,
    # gradients, task buffers and optimizer state across the ranks.
    strategy: Literal["ddp", "fsdp"] = "ddp"


# Metrics each benchmark produces, for validating a sweep's objectives at load time.
_SPLIT_METRICS = ("answer_loss", "prob", "rougeL_recall", "truth_ratio")
BENCHMARK_METRICS = {
    "qa": [f"{s}_{m}" for s in ("forget", "retain")
           for m in ("answer_loss", "answer_prob", "rougeL_recall", "truncated_inputs")],
    "tofu": [f"{s}_{m}" for s in ("forget", "retain", "real_authors", "world_facts") for m in _SPLIT_METRICS]
    + ["model_utility", "forget_quality", "log10_forget_quality", "mia_loss_auc", "mia_min_k_auc", "privleak",
       "extraction_strength", "truncated_inputs"],
    "muse": ["muse_privleak_auc", "muse_privleak", "muse_privleak_published_ref", "muse_extraction_strength"],
    "corpus": ["forget_heldout_ppl", "retain_heldout_ppl", "forget_heldout_loss", "retain_heldout_loss"],
}
# lm-eval's metric names (lm_eval/api/metrics.py) a task's metric_list may name; preflight checks
# an objective against its task's own list.
LM_EVAL_METRICS = ("acc", "acc_norm", "acc_mutual_info", "acc_stderr", "acc_norm_stderr", "exact_match",
                   "f1", "mcc", "brier_score", "likelihood", "perplexity", "word_perplexity",
                   "byte_perplexity", "bits_per_byte", "bleu", "chrf", "ter")


def benchmark_metrics(bench: str, e: "EvalSpec", mcq_questions: Optional[QuestionCount] = None) -> list[str]:
    """The metric names ``bench`` produces under ``e`` (an MCQ subset labelled in the name)."""
    if bench in MCQ_BENCHMARKS:
        return [f"{bench}_acc{subset_label(mcq_questions or e.mcq_questions)}"]
    if bench == "lm_eval":
        label = subset_label(e.lm_eval.limit) if e.lm_eval else ""
        return [f"lm_eval/{t}/{m}{label}" for t in (e.lm_eval.tasks if e.lm_eval else []) for m in LM_EVAL_METRICS]
    if bench == "muse":  # its ROUGE metrics are named after their flavour
        return [m + MUSE_FLAVOUR_SUFFIX[e.muse_flavour] for m in MUSE_ROUGE_METRICS] + BENCHMARK_METRICS["muse"]
    return BENCHMARK_METRICS[bench]


MUSE_ROUGE_METRICS = ("muse_knowmem_forget", "muse_knowmem_retain", "muse_verbmem_forget")


class ConstraintSpec(_Strict):
    """Retention-first constraint, passed to Optuna as a real constraint (feasible when <= 0)."""

    metric: str
    at_least: Optional[float] = None
    at_least_fraction_of_target: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.at_least is None) == (self.at_least_fraction_of_target is None):
            raise ValueError("@sweep.constraint: give exactly one of at_least, at_least_fraction_of_target")
        return self


class SchedulerSpec(_Strict):
    """Multi-objective early stopping (``sweep/schedulers/mo_asha.py``): at each rung (grace_period
    x reduction_factor^k steps) the trials reaching it are ranked by non-dominated sorting and all
    but the best 1/reduction_factor stop. Rungs are met at evaluations (``eval.every``)."""

    name: Literal["mo_asha"] = "mo_asha"
    grace_period: int = Field(8, gt=0)      # steps before the first rung
    reduction_factor: float = Field(2.0, gt=1)
    tie_break: Literal["hypervolume", "crowding"] = "hypervolume"
    # What a rung ranks: the trial's evaluation there ("last", ASHA's rule) or every point it has
    # been evaluated at so far ("trajectory": unlearning trajectories are not monotone).
    rank_by: Literal["last", "trajectory"] = "last"
    # Never stop a trial with a point on the sweep's front as it stands.
    keep_front: bool = False
    # Also judge a trial by the point its last two evaluations predict at (1 + extrapolate) times
    # its steps (0: off); unlearning trade-offs often come late.
    extrapolate: float = Field(0.0, ge=0, allow_inf_nan=False)
    # "stop": ASHA's stopping variant; "pause": its promotion variant - a trial below the cut waits
    # on its checkpoint and resumes from it if it enters the best 1/reduction_factor of its rung.
    # "synchronous": successive halving - each rung is decided once, when every trial has reached it
    # (or ended), so the decisions do not depend on the order trials arrive in.
    promotion: Literal["stop", "pause", "synchronous"] = "stop"
    # The rungs' steps (increasing, multiples of eval.every, below unlearn.steps), instead of
    # grace_period x reduction_factor^k; reduction_factor still sets the fraction kept at each.
    rung_levels: Optional[list[int]] = None
    # Also keep the best 1/reduction_factor (at least one) of each value of this searched choice at
    # every rung: methods forget at their own pace, and a slow one's best comes late.
    stratify: Optional[Literal["method", "forget", "retain"]] = None
    # Successive halving only: the share of what FIFO would train (num_trials x unlearn.steps, a trial
    # that ended by itself counted where it ended) the sweep may train; what the rungs leave
    # uncommitted once the last is decided resumes waiting trials, lowest rung first.
    budget: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    # Evaluation metrics ({name: min|max}) that order trials tied exactly on the objectives at a
    # rung, in turn: ROUGE-L on a few questions ties slow trials that a probability tells apart.
    tie_metrics: Optional[dict[str, Literal["min", "max"]]] = None


DEFAULT_TRIALS = 8


class SweepSpec(_Strict):
    search_space: Path
    objectives: dict[str, Literal["min", "max"]]
    sampler: Literal["tpe", "gp", "nsga2", "random", "grid"] = "tpe"
    # grid: num_trials = the grid's size (omit it, or give that number); None only until the sweep
    # has read the grid (raysweep.sweep.grid.resolve_grid)
    num_trials: Optional[int] = Field(None, gt=0)
    # grid only: points per numeric range, one int for all or {parameter: points} (sweep/grid.py)
    grid_points: Optional[Union[int, dict[str, int]]] = None
    max_concurrent: int = Field(2, gt=0)
    seed: int = 0
    constraint: Optional[ConstraintSpec] = None
    reference_point: Optional[dict[str, float]] = None
    checkpoint: Literal["artifact", "uri"] = "artifact"
    tracking_uri: Optional[str] = None
    storage_path: Optional[Path] = None
    experiment: Optional[str] = None
    # Early stop of clearly failed trials: non-finite losses always; and this retain-loss ceiling.
    stop_if_retain_loss_above: Optional[float] = Field(None, gt=0)
    trial_cpus: float = Field(0.25, gt=0)
    scheduler: Optional[SchedulerSpec] = None

    @field_validator("search_space")
    @classmethod
    def _space_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError("file does not exist (a search space YAML)")
        return v

    @field_validator("objectives")
    @classmethod
    def _some(cls, v):
        if not v:
            raise ValueError("at least one objective")
        return v

    @model_validator(mode="before")
    @classmethod
    def _trials(cls, data):
        """num_trials omitted: 8, except with sampler grid, where the sweep makes it the grid's
        size (``raysweep.sweep.grid.resolve_grid``: the grid needs the search space, which the
        sweep reads; the spec stays below the sweep)."""
        if isinstance(data, dict) and data.get("sampler") != "grid" and data.get("num_trials") is None:
            data = {**data, "num_trials": DEFAULT_TRIALS}
        return data

    @model_validator(mode="after")
    def _grid(self):
        if self.sampler != "grid" and self.grid_points is not None:
            raise ValueError(f"@sweep.grid_points: {self.grid_points!r} is not allowed with sampler "
                             f"{self.sampler!r} (sampler grid only)")
        return self


class JobSpec(_Strict):
    name: str = "raysweep-job"
    seed: int = 0
    data: DataSpec
    model: ModelSpec = ModelSpec()
    prepare: PrepareSpec = PrepareSpec()
    unlearn: UnlearnSpec
    eval: EvalSpec = EvalSpec()
    train: TrainSpec = TrainSpec()
    sweep: Optional[SweepSpec] = None
    cache_dir: Path = Field(default_factory=default_cache_dir)
    source: Optional[Path] = None

    @model_validator(mode="after")
    def _lora_not_sharded(self):
        if self.model.lora is not None and self.train.strategy == "fsdp":
            raise ValueError("@train.strategy: 'fsdp' is not allowed with model.lora (LoRA trains with ddp; "
                             "its buffers are adapter-sized already)")
        return self

    @model_validator(mode="after")
    def _prior_knowledge_is_tofu(self):
        if self.prepare.prior_knowledge and self.data.benchmark != "tofu":
            raise ValueError(f"@prepare.prior_knowledge: True is not allowed with data.benchmark "
                             f"{self.data.benchmark!r} (tofu: it adds TOFU's real-authors and world-facts QA)")
        return self

    @model_validator(mode="after")
    def _fp32_master_weights(self):
        if self.train.precision != "fp32" and self.model.dtype != "float32":
            raise ValueError(f"@model.dtype: {self.model.dtype!r} is not allowed with train.precision "
                             f"{self.train.precision!r} (float32: master weights stay fp32)")
        return self

    @model_validator(mode="after")
    def _sweep_metrics(self):
        if self.sweep is None:
            return self
        benches = self.eval.benchmarks or [self.data.benchmark]
        known = [m for b in benches for m in benchmark_metrics(b, self.eval)]
        names = list(self.sweep.objectives) + ([self.sweep.constraint.metric] if self.sweep.constraint else [])
        names += list(self.sweep.reference_point or {})
        ties = list((self.sweep.scheduler.tie_metrics or {}) if self.sweep.scheduler else {})
        for name in ties:
            if name not in known:
                raise ValueError(f"@sweep.scheduler.tie_metrics: {name!r} is not allowed (metrics of eval.benchmarks "
                                 f"{benches}: {', '.join(known)})"
                                 f"{'; did you mean ' + repr(_close(name, known)) + '?' if _close(name, known) else ''}")
        names += ties  # evaluated along the run too, as the objectives
        for name in names:
            if name not in known:
                flavour = next((f for f in MUSE_FLAVOURS if "muse" in benches and name in benchmark_metrics("muse", self.eval.model_copy(update={"muse_flavour": f}))), None)
                raise ValueError(
                    f"@sweep: metric {name!r} is not allowed (metrics of eval.benchmarks {benches}: {', '.join(known)})"
                    f"{'; it is the name with eval.muse_flavour ' + repr(flavour) if flavour else ''}"
                    f"{'; did you mean ' + repr(_close(name, known)) + '?' if _close(name, known) else ''}")
        needs_ref = {"forget_quality", "log10_forget_quality", "privleak", "muse_privleak"} & set(names)
        if needs_ref and not self.prepare.retain_reference:
            raise ValueError(f"@prepare.retain_reference: False is not allowed (sweep uses {sorted(needs_ref)[0]})")
        if self.sweep.reference_point and set(self.sweep.reference_point) != set(self.sweep.objectives):
            raise ValueError("@sweep.reference_point: give one value for every objective")
        if self.eval.every:
            during = self.eval.during_benchmarks or benches
            known_during = {m for b in during for m in benchmark_metrics(b, self.eval, self.eval.during_mcq_questions)}
            missing = [n for n in names if n not in known_during]
            if missing and self.eval.during_mcq_questions is not None and \
                    any(missing[0] in benchmark_metrics(b, self.eval) for b in MCQ_BENCHMARKS):
                raise ValueError(f"@eval.during_mcq_questions: {self.eval.during_mcq_questions!r} is not allowed "
                                 f"(the sweep's metric {missing[0]!r} is measured on eval.mcq_questions="
                                 f"{self.eval.mcq_questions!r}; a subset's accuracy is another metric)")
            if missing:
                raise ValueError(f"@eval.during_benchmarks: {during} is not allowed (the sweep's metric "
                                 f"{missing[0]!r} must be evaluated during the run too)")
        if self.sweep.scheduler is not None:
            if not self.eval.every:
                raise ValueError("@sweep.scheduler: mo_asha is not allowed without eval.every "
                                 "(its rungs are decided on evaluations along the run)")
            sched = self.sweep.scheduler
            if sched.promotion != "stop" and self.train.workers > 1:
                # a paused trial resumes as after a failure; that is tested for one-process trials only
                raise ValueError(f"@sweep.scheduler.promotion: {sched.promotion!r} is not allowed with train.workers "
                                 f"{self.train.workers} (one-process trials only; use promotion: stop)")
            if sched.budget is not None and sched.promotion != "synchronous":
                raise ValueError(f"@sweep.scheduler.budget: {sched.budget} is not allowed with promotion "
                                 f"{sched.promotion!r} (synchronous only: its steps left are known once the last "
                                 "rung is decided)")
            levels = sched.rung_levels
            if levels is not None and (not levels or any(b <= a for a, b in zip(levels, levels[1:]))
                                       or levels[0] <= 0 or levels[-1] >= self.unlearn.steps
                                       or any(x % self.eval.every for x in levels)):
                raise ValueError(f"@sweep.scheduler.rung_levels: {levels} is not allowed (increasing steps, each a "
                                 f"multiple of eval.every={self.eval.every} and below unlearn.steps={self.unlearn.steps})")
            if levels is None and self.sweep.scheduler.grace_period % self.eval.every:
                raise ValueError(f"@sweep.scheduler.grace_period: {self.sweep.scheduler.grace_period} is not "
                                 f"allowed (must be a multiple of eval.every={self.eval.every})")
        return self


class _FieldError(ValueError):
    def __init__(self, field: str, value: Any, allowed: str):
        super().__init__(f"{field}: {value!r} is not allowed ({allowed})")
        self.field = field


def _check_named(field: str, spec: NamedSpec, build) -> None:
    try:
        build(spec.name, spec.params)
    except UnknownNameError as err:
        hint = f"; did you mean '{_close(err.name, err.allowed)}'?" if _close(err.name, err.allowed) else ""
        sub = "name" if err.name == spec.name else err.name
        raise ValueError(
            f"@{field}.{sub}: {err.name!r} is not allowed (allowed: {', '.join(err.allowed)}){hint}"
        ) from None
    except HyperparameterError as err:
        raise ValueError(f"@{field}.{err.param}: {err.detail}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"@{field}: {err}") from None


def _close(name: str, allowed: list[str]) -> Optional[str]:
    m = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return m[0] if m else None


def _one_line(err: ValidationError, model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):  # our own message already names the field
        return msg[1:]
    if e["type"] == "extra_forbidden":
        parent = _model_at(model, e["loc"][:-1])
        allowed = list(parent.model_fields) if parent else []
        close = _close(str(e["loc"][-1]), allowed)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"{loc}: unknown key (allowed: {', '.join(allowed)}){hint}"
    if e["type"] == "missing":
        return f"{loc}: missing (required)"
    value = e.get("input")
    return f"{loc}: {str(value) if isinstance(value, Path) else value!r} is not allowed ({msg})"


def _model_at(model: type[BaseModel], loc) -> Optional[type[BaseModel]]:
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            return None if isinstance(part, str) else model
        ann = field.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model


def _resolve_paths(raw: dict, base: Path) -> dict:
    """Relative paths in a job file are relative to the job file's folder."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        p = Path(os.path.expandvars(data["path"])).expanduser()
        data["path"] = p if p.is_absolute() else (base / p).resolve()
    sw = raw.get("sweep")
    if isinstance(sw, dict):
        for key in ("search_space", "storage_path"):
            if isinstance(sw.get(key), str) and "://" not in sw[key]:
                p = Path(os.path.expandvars(sw[key])).expanduser()
                sw[key] = p if p.is_absolute() else (base / p).resolve()
    ev = raw.get("eval")
    for node, key in ((ev, "mcq_data"), (ev.get("lm_eval") if isinstance(ev, dict) else None, "include_path")):
        if isinstance(node, dict) and isinstance(node.get(key), str):
            p = Path(os.path.expandvars(node[key])).expanduser()
            node[key] = p if p.is_absolute() else (base / p).resolve()
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("base"), str):
        b = model["base"]
        if b.startswith((".", "/", "~")):
            p = Path(b).expanduser()
            model["base"] = str(p if p.is_absolute() else (base / p).resolve())
    return raw


def _hub_data(raw: dict, base: Path) -> dict:
    """``data.path`` / ``eval.mcq_data`` naming a hub dataset (or a local copy of its repository):
    materialised once with ``datasets`` into the cache as the JSON Lines raysweep reads."""
    from raysweep.data.hub import resolve_data_source

    cache = Path(os.path.expandvars(str(raw.get("cache_dir") or default_cache_dir()))).expanduser()
    data, ev = raw.get("data"), raw.get("eval")
    targets = []
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data.get("benchmark", "tofu") in ("tofu", "muse"):
        targets.append((data, "path", data.get("benchmark", "tofu"), "data.path"))
    if isinstance(ev, dict) and isinstance(ev.get("mcq_data"), str):
        targets.append((ev, "mcq_data", "wmdp", "eval.mcq_data"))
    for node, key, layout, field in targets:
        try:
            local = resolve_data_source(node[key], layout, cache, base)
        except (ValueError, OSError) as err:
            raise JobSpecError(f"{field}: {node[key]!r} is not allowed (not a local folder; as a hub dataset: {err})") from None
        if local is not None:
            node[key] = str(local)
    return raw


def apply_preset(raw: dict) -> dict:
    """``unlearn.preset``: the preset's values where the job (after ``--set`` overrides) gives none."""
    from raysweep import presets

    return presets.apply_preset(raw, {"method": UnlearnSpec.model_fields["method"].default.name,
                                      "benchmark": DataSpec.model_fields["benchmark"].default,
                                      "forget_split": DataSpec.model_fields["forget_split"].default})


def parse_job(raw: dict, base_dir: Path = Path("."), source: Optional[Path] = None) -> JobSpec:
    if not isinstance(raw, dict):
        raise JobSpecError("a job file must be a YAML mapping")
    raw = apply_preset(_resolve_paths(_hub_data(dict(raw), base_dir), base_dir))
    if source is not None:
        raw["source"] = source
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise JobSpecError(_one_line(err, JobSpec)) from None


def load_job(path: Union[str, Path], overrides: Optional[dict] = None) -> JobSpec:
    from raysweep.validation import InputError, read_yaml

    path = Path(path)
    try:
        raw = read_yaml(path, "job file")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise InputError(f"job file '{path}': a YAML {type(raw).__name__} is not allowed (a YAML mapping)")
        for dotted, value in (overrides or {}).items():
            set_dotted(raw, dotted, value)
    except InputError as err:
        raise JobSpecError(str(err)) from None
    return parse_job(raw, path.parent.resolve(), path.resolve())


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """``raw['a']['b'] = value`` for ``dotted = 'a.b'``, creating mappings on the way."""
    from raysweep.validation import set_dotted as checked

    checked(raw, dotted, value)
