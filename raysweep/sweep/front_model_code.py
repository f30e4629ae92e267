"""The pyfunc of a front checkpoint logged by ``front_models.py`` (MLflow models-from-code: this
file is the model's code, nothing is pickled). On load it rebuilds the Hugging Face model from the
config and tokenizer saved with it and the checkpoint the sweep recorded; ``predict`` takes prompts
(a list of strings) and returns greedy answers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class CheckpointModel(PythonModel):
    def load_context(self, context):
        """Reads the checkpoint and the config and tokenizer saved with the model, nothing else:
        never ``prepare`` (which may fine-tune or download). A LoRA point also reads the target
        model its adapters were trained on, where the sweep's machine had it."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from raysweep.models.build import DTYPES, load_causal_lm
        from raysweep.spec import JobSpec
        from raysweep.sweep import tracking
        from raysweep.sweep.export import _local_checkpoint, point_model

        job = JobSpec.model_validate_json(Path(context.artifacts["job"]).read_text())
        base = Path(context.artifacts["base"])
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", job.eval.max_new_tokens))
        self._dir = tempfile.TemporaryDirectory(prefix="raysweep-pyfunc-")
        scratch = Path(self._dir.name) / "ckpt"
        scratch.mkdir()
        ckpt = _local_checkpoint(tracking.client(mlflow.get_tracking_uri()), context.model_config["checkpoint"], scratch)
        if job.model.lora is None:  # the checkpoint holds every weight: the saved config is enough
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base), dtype=DTYPES[job.model.dtype])
        else:
            target = Path(context.model_config["target"])
            if not (target / "config.json").is_file():
                raise tracking.TrackingError(
                    f"this LoRA point needs the target model its adapters were trained on, at '{target}', which is "
                    "not on this machine (copy it there; loading never prepares or downloads a model)")
            model = load_causal_lm(target, job.model.dtype)
        self.model = point_model(job, ckpt, model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base)

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
