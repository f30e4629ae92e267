"""The pyfunc of a front checkpoint logged by ``front_models.py`` (MLflow models-from-code: this
file is the model's code, nothing is pickled). On load it rebuilds the Hugging Face model from the
trial's job and the checkpoint the sweep recorded, as ``raysweep export`` does; ``predict`` takes
prompts (a list of strings) and returns greedy answers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class CheckpointModel(PythonModel):
    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from raysweep.spec import JobSpec
        from raysweep.sweep import tracking
        from raysweep.sweep.export import _local_checkpoint, _write_model

        job = JobSpec.model_validate_json(Path(context.artifacts["job"]).read_text())
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", job.eval.max_new_tokens))
        self._dir = tempfile.TemporaryDirectory(prefix="raysweep-pyfunc-")
        scratch, out = Path(self._dir.name) / "ckpt", Path(self._dir.name) / "model"
        scratch.mkdir()
        ckpt = _local_checkpoint(tracking.client(mlflow.get_tracking_uri()), context.model_config["checkpoint"], scratch)
        _write_model(job, ckpt, out)
        self.tokenizer = AutoTokenizer.from_pretrained(out)
        self.model = AutoModelForCausalLM.from_pretrained(out).eval()

    # Typed, so MLflow validates the input and does not advise type hints on every sweep's console.
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import torch

        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        out = []
        for prompt in prompts:
            ids = self.tokenizer(str(prompt), return_tensors="pt")
            with torch.no_grad():
                gen = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
            out.append(self.tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return out


mlflow.models.set_model(CheckpointModel())
