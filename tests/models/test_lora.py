"""LoRA through peft: only adapters train and are synthesised, RMU's layer restriction composes,
checkpoints hold the adapters, and the merged export is the adapter + base model."""

import copy
import hashlib

import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.models.lora import apply_lora, host_name
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.spec import LoraSpec

from ..conftest import tiny_job
from ..engine.test_engine import batches
from ..helpers import tiny_llama


def base_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if ".lora_" not in name:
            h.update(name.encode())
            h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_host_names_map_adapters_to_their_base_weight():
    assert host_name("base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight") == \
        "model.layers.1.mlp.down_proj.weight"
    assert host_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert host_name("model.layers.0.mlp.down_proj.weight") == "model.layers.0.mlp.down_proj.weight"


@pytest.mark.parametrize("method", ["sago", "gru"])
@pytest.mark.matrix(strategy="single", precision="fp32", lora="on", gradient_checkpointing="off", eval_every="off", event="uninterrupted", export="none")
def test_only_adapters_train_and_are_synthesised(method):
    from raysweep.synthesis import build_synthesis

    model = apply_lora(tiny_llama(hidden=32), LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    before = base_hash(model)
    eng = UnlearningEngine(model, build_objective("ga"), [build_objective("nll")], build_synthesis(method, {}),
                           ObjectiveContext(), lr=1e-2)
    assert eng.param_names and all(".lora_" in n for n in eng.param_names)
    assert len(eng.param_names) == 2 * 3 * 2  # A and B of 3 modules in 2 layers
    grads, _ = eng.task_gradients([batches()])
    n_adapter = sum(p.numel() for p in eng.params)
    assert sum(t.numel() for t in grads[0] if t is not None) == n_adapter
    assert n_adapter < 0.1 * sum(p.numel() for p in model.parameters())  # the buffers are tiny
    for _ in range(3):
        eng.step([batches()])
    assert base_hash(model) == before, "base weights must not change"
    moved = [n for n, p in model.named_parameters() if n in adapters and not torch.equal(p, adapters[n])]
    assert any("lora_B" in n for n in moved) and any("lora_A" in n for n in moved)


def test_rmu_layer_restriction_composes_with_lora():
    model = tiny_llama(hidden=32, layers=3)
    ref = copy.deepcopy(model).eval()
    model = apply_lora(model, LoraSpec(r=2, target_modules=["q_proj", "down_proj"]))
    from raysweep.synthesis import build_synthesis

    eng = UnlearningEngine(model, build_objective("rmu", {"layer": 1}), [build_objective("rmu_retain", {"layer": 1})],
                           build_synthesis("graddiff"), ObjectiveContext(reference_model=ref), lr=1e-2)
    assert sorted(eng.param_names) == sorted(
        f"base_model.model.model.layers.{i}.mlp.down_proj.lora_{ab}.default.weight" for i in (0, 1) for ab in "AB")
    before = base_hash(model)
    eng.step([batches()])
    assert base_hash(model) == before


@pytest.mark.matrix(strategy="single", method="sago", precision="fp32", lora="on", gradient_checkpointing="off", eval_every="off", event="uninterrupted")
def test_lora_trial_checkpoints_adapters_and_exports_a_merged_model(tmp_path, tofu_dir, shared_cache):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from raysweep.distributed.checkpoint import WEIGHTS
    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.models.lora import ADAPTER_DIR, MERGED_DIR
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    from ..distributed.workers import Recorder

    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=3, batch_size=4, lr=1e-2, method={"name": "sago"})
    job = load_job(path, {"model.lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}})
    target = prepare(job).target
    base_before = hashlib.sha256(next(target.glob("*.safetensors")).read_bytes()).hexdigest()
    rec = Recorder()
    run_worker(job, 0, 1, torch.device("cpu"), rec, WorkerOptions(evaluate=False), str(tmp_path / "ckpt"))
    ckpt = [c for _, c in rec.rows if c][-1]
    from pathlib import Path

    ckpt = Path(ckpt)
    saved = load_file(str(ckpt / WEIGHTS))
    assert saved and all(".lora_" in k for k in saved)  # adapters only
    assert base_before == hashlib.sha256(next(target.glob("*.safetensors")).read_bytes()).hexdigest()

    base = AutoModelForCausalLM.from_pretrained(str(target))
    with_adapter = PeftModel.from_pretrained(base, str(ckpt / ADAPTER_DIR)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(ckpt / MERGED_DIR)).eval()
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    ids = torch.randint(3, 300, (2, 24))
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(str(target)).eval()(input_ids=ids).logits
        a = with_adapter(input_ids=ids).logits
        m = merged(input_ids=ids).logits
    assert (a - plain).abs().max() > 1e-4, "training must have changed the adapted model"
    torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-5)


def test_lora_resume_from_an_adapter_checkpoint_equals_uninterrupted(tmp_path, tofu_dir, shared_cache):
    from safetensors.torch import load_file

    from raysweep.distributed.checkpoint import WEIGHTS
    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.spec import load_job

    from ..distributed.workers import Recorder

    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=4, batch_size=4, lr=1e-2, method={"name": "gru"})
    job = load_job(path, {"model.lora": {"r": 4, "target_modules": ["q_proj", "down_proj"]}})

    def run(root, **options):
        rec = Recorder()
        run_worker(job, 0, 1, torch.device("cpu"), rec, WorkerOptions(evaluate=False, **options), str(tmp_path / root))
        return [c for _, c in rec.rows if c][-1]

    whole = run("whole")  # with a fresh cache this run also trains the target; the trial must not depend on it
    cut = run("cut", stop_at_step=2, checkpoint_every=2)
    resumed = run("resumed", resume_from=cut)
    a, b = load_file(f"{whole}/{WEIGHTS}"), load_file(f"{resumed}/{WEIGHTS}")
    assert set(a) == set(b) and all(".lora_" in k for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
