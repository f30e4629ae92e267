"""Checkpoint integrity and safety (issue 12, item 3): atomic writes with checksums, damaged
checkpoints detected with the previous good one used, and no pickle ever loaded from storage."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from raysweep.distributed import checkpoint as ck
from raysweep.distributed.checkpoint import (CheckpointError, load_checkpoint, load_first_good, load_weights,
                                             save_checkpoint, verify_checkpoint)
from raysweep.synthesis import build_synthesis

REPO = Path(__file__).resolve().parents[2]


class _Engine:
    """The engine's checkpoint contract on real parts: an AdamW optimizer that has stepped and
    GRU's EMA state (a list of tensors)."""

    def __init__(self, model):
        self.model = model
        self.step_count = 0
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        self.synthesis = build_synthesis("gru", {"mu": 0.5})
        self.device = torch.device("cpu")

    def step(self):
        loss = self.model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.synthesis.ema = [p.detach().clone() * 0.5 for p in self.model.parameters()]
        self.step_count += 1

    def state_dict(self):
        return {"step": self.step_count, "optimizer": self.optimizer.state_dict(),
                "synthesis": {"ema": self.synthesis.ema}}

    def load_state_dict(self, state):
        self.step_count = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.synthesis.ema = state["synthesis"]["ema"]


def _trained(steps=3, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    engine = _Engine(model)
    for _ in range(steps):
        engine.step()
    return model, engine


def test_round_trip_restores_weights_optimizer_synthesis_and_rng(tmp_path):
    model, engine = _trained()
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    save_checkpoint(tmp_path / "c", model, engine)
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    engine.step()  # move on, then restore into fresh objects
    fresh_model, fresh = _trained(steps=0, seed=1)
    assert load_checkpoint(tmp_path / "c", fresh_model, fresh) == 3
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    for a, b in zip(fresh_model.state_dict().values(), _trained()[0].state_dict().values()):
        assert torch.equal(a, b)
    ref_model, ref = _trained()
    sa, sb = fresh.optimizer.state_dict(), ref.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sb["state"]:  # int keys survive, tensors bitwise
        for name, v in sb["state"][k].items():
            assert torch.equal(sa["state"][k][name], v)
    assert all(torch.equal(a, b) for a, b in zip(fresh.synthesis.ema, ref.synthesis.ema))
    assert sorted(os.listdir(tmp_path / "c")) == ["meta.json", "model.safetensors", "train_state.json",
                                                  "train_state.safetensors"]


def test_overwrite_is_atomic_and_leaves_no_temporary_folder(tmp_path):
    model, engine = _trained()
    save_checkpoint(tmp_path / "c", model, engine)
    engine.step()
    save_checkpoint(tmp_path / "c", model, engine)
    assert verify_checkpoint(tmp_path / "c")["step"] == 4
    assert os.listdir(tmp_path) == ["c"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    """Disk full in the middle of a write (ENOSPC injected into the second file): a clear error,
    no partial folder, and the checkpoint already there is still the good one."""
    model, engine = _trained()
    save_checkpoint(tmp_path / "c", model, engine)
    from safetensors import torch as st

    real, calls = st.save_file, []

    def full_disk(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(st, "save_file", full_disk)
    engine.step()
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*No space left on device"):
        save_checkpoint(tmp_path / "c", model, engine)
    assert os.listdir(tmp_path) == ["c"] and verify_checkpoint(tmp_path / "c")["step"] == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage, capsys):
    model, engine = _trained()
    save_checkpoint(tmp_path / "checkpoint_000001", model, engine)
    engine.step()
    save_checkpoint(tmp_path / "checkpoint_000002", model, engine)
    latest = tmp_path / "checkpoint_000002"
    target = latest / ("meta.json" if damage == "meta" else "model.safetensors")
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(latest)
    assert str(latest) in str(err.value) and "\n" not in str(err.value)
    fresh_model, fresh = _trained(steps=0, seed=1)
    step, used = load_first_good([latest, *ck.previous_checkpoints(latest)], fresh_model, fresh, log=print)
    assert (step, used) == (3, tmp_path / "checkpoint_000001")
    assert "trying the previous checkpoint" in capsys.readouterr().out
    with pytest.raises(CheckpointError):
        load_weights(latest)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    model, engine = _trained()
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"engine": _Payload(marker)})
    # 1. an old-format checkpoint (or one an attacker wrote): train_state.pt is never opened
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "train_state.pt").write_bytes(evil)
    (legacy / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"train_state.pt is not allowed \(a pickle, never loaded"):
        load_checkpoint(legacy, model, engine)
    # 2. the pickle planted in place of the state files, with meta.json rewritten to match
    planted = tmp_path / "planted"
    save_checkpoint(planted, model, engine)
    for name in ("train_state.safetensors", "train_state.json", "model.safetensors"):
        (planted / name).write_bytes(evil)
    meta = json.loads((planted / "meta.json").read_text())
    meta["sha256"] = {n: ck._sha256(planted / n) for n in meta["sha256"]}
    (planted / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a raysweep checkpoint"):
        load_checkpoint(planted, model, engine)
    # 3. torch.load of a planted .pt with weights_only=True (what the rest of the stack may use) refuses too
    (tmp_path / "evil.pt").write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists()
    # the payload is real: plain pickle would have run it
    pickle.loads(evil)
    assert marker.read_text() == "pwned"


def test_no_code_path_unpickles_from_storage():
    """The package never calls torch.load without weights_only=True, and pickle.load(s) only in
    distributed/local.py (results from its own child processes over a pipe, never from disk)."""
    offenders = []
    for path in (REPO / "raysweep").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        if re.search(r"pickle\.loads?\(", text) and path.name != "local.py":
            offenders.append(f"{path.name}: pickle.load")
    assert not offenders, offenders


# ---- issue 21, defect 8: the swap, the temp folder and strict loading ---------------------------
def test_the_temp_folder_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """A rename is durable only once the renamed folder's own entries are on disk."""
    model, engine = _trained()
    events = []
    real_fsync, real_replace = ck._fsync, os.replace
    monkeypatch.setattr(ck, "_fsync", lambda p: (events.append(("fsync", Path(p))), real_fsync(p))[1])
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (events.append(("replace", Path(a))), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "c", model, engine)
    renamed = [path for kind, path in events if kind == "replace"][-1]
    assert ("fsync", renamed) in events[:events.index(("replace", renamed))], events


def test_a_crash_between_the_two_renames_leaves_a_checkpoint_the_fallback_finds(tmp_path, monkeypatch):
    """Overwriting moves the old folder aside, then renames the new one in: a process killed
    in between leaves only the moved-aside folder, which must still be found."""
    model, engine = _trained()
    save_checkpoint(tmp_path / "checkpoint_000003", model, engine)
    real_replace = os.replace

    def killed_after_first_rename(a, b):
        real_replace(a, b)
        raise KeyboardInterrupt  # the process dies here: nothing after this runs

    monkeypatch.setattr(ck.os, "replace", killed_after_first_rename)
    engine.step()
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint_000003", model, engine)
    monkeypatch.undo()
    latest = tmp_path / "checkpoint_000003"
    fresh_model, fresh = _trained(steps=0, seed=1)
    step, used = load_first_good([latest, *ck.previous_checkpoints(latest)], fresh_model, fresh)
    assert step == 3 and used is not None and used.name.startswith(".checkpoint_000003.old-")


def test_a_failure_that_is_not_an_os_error_leaves_no_temporary_folder(tmp_path):
    model, engine = _trained()
    engine.synthesis.ema = {"not", "allowed"}  # a set: the state encoder refuses it (TypeError)
    with pytest.raises(TypeError, match="a set is not allowed"):
        save_checkpoint(tmp_path / "c", model, engine)
    assert os.listdir(tmp_path) == []


def _other_shapes(extra_layer=False, width=16):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)]
    if extra_layer:
        layers += [torch.nn.Tanh(), torch.nn.Linear(1, 1)]
    model = torch.nn.Sequential(*layers)
    return model, _Engine(model)


@pytest.mark.parametrize("mismatch", ["missing keys", "other shapes", "other optimizer"])
def test_a_checkpoint_that_does_not_fit_is_a_checkpoint_error_and_the_previous_one_is_used(tmp_path, mismatch):
    """Weights are loaded strictly, and every load error (weights, optimizer) is a CheckpointError,
    so the fallback moves on to the previous checkpoint instead of crashing or loading half."""
    model, engine = _trained()
    save_checkpoint(tmp_path / "checkpoint_000001", model, engine)
    if mismatch == "missing keys":
        other, other_engine = _other_shapes(extra_layer=True)
    elif mismatch == "other shapes":
        other, other_engine = _other_shapes(width=4)
    else:  # same weights, an optimizer with two parameter groups
        other, other_engine = _other_shapes()
        other_engine.optimizer = torch.optim.AdamW([{"params": other[0].parameters()},
                                                    {"params": other[2].parameters()}], lr=1e-2)
    for _ in range(2):
        other_engine.step()
    save_checkpoint(tmp_path / "checkpoint_000002", other, other_engine)
    fresh_model, fresh = _trained(steps=0, seed=1)
    with pytest.raises(CheckpointError, match="checkpoint_000002") as err:
        load_checkpoint(tmp_path / "checkpoint_000002", fresh_model, fresh)
    assert "\n" not in str(err.value)
    latest = tmp_path / "checkpoint_000002"
    assert load_first_good([latest, *ck.previous_checkpoints(latest)], fresh_model, fresh) == \
        (3, tmp_path / "checkpoint_000001")
    for a, b in zip(fresh_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, vocab_size=64, tie_word_embeddings=tied))


class _LMEngine(_Engine):
    def step(self):
        loss = self.model(input_ids=torch.randint(0, 64, (2, 5)), labels=torch.randint(0, 64, (2, 5))).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.synthesis.ema = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]
        self.step_count += 1


@pytest.mark.parametrize("kind", ["tied", "untied", "lora"])
def test_strict_load_accepts_tied_embeddings_and_adapter_only_lora_checkpoints(tmp_path, kind):
    """The strict load still takes what our own checkpoints hold: both names of tied embeddings
    (stored as copies), and a LoRA checkpoint's adapters alone (the base never changes)."""
    def build():
        model = _tiny_llama(tied=kind == "tied")
        if kind == "lora":
            from raysweep.models.lora import apply_lora
            from raysweep.spec import LoraSpec

            model = apply_lora(model, LoraSpec(r=2, target_modules=["q_proj", "v_proj"]))
        return model, _LMEngine(model)

    model, engine = build()
    engine.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    engine.step()
    save_checkpoint(tmp_path / "c", model, engine)
    fresh_model, fresh = build()
    fresh.optimizer = torch.optim.AdamW([p for p in fresh_model.parameters() if p.requires_grad], lr=1e-2)
    assert load_checkpoint(tmp_path / "c", fresh_model, fresh) == 1
    for (name, a), b in zip(fresh_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["../../outside.bin", "/dev/zero", "sub/../../outside.bin", "link_to_zero",
                                  "link_outside"])
def test_meta_json_names_only_files_inside_the_checkpoint(tmp_path, name):
    """Issue 23, finding 4: meta.json comes from storage. A file name in it that leaves the folder
    (``..``, an absolute path, a link) or is not a regular file is refused in one line, before it
    is opened: ``/dev/zero`` would hash forever, ``../x`` would read another user's file."""
    model, engine = _trained()
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, engine)
    (tmp_path / "outside.bin").write_bytes(b"secret")
    (folder / "link_to_zero").symlink_to("/dev/zero")
    (folder / "link_outside").symlink_to(tmp_path / "outside.bin")
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"][name] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        ck.verify_checkpoint(folder)
    assert str(err.value) == (f"checkpoint '{folder}': meta.json names {name!r}, which is not allowed "
                              "(a file inside the checkpoint folder)")
