"""Reading and validating a job (launch's checks before Ray starts) does not import torch (raysweep/lazy_torch.py): every command
that only checks a job (launch's validation, --dry-run, bad-input errors) answers without it."""

import subprocess
import sys
from pathlib import Path

import torch

from raysweep.lazy_torch import LazyModule

REPO = Path(__file__).resolve().parents[1]


def test_job_validation_and_the_registries_do_not_import_torch():
    code = (
        "import sys\n"
        "from raysweep.spec import load_job\n"
        "from raysweep.objectives import OBJECTIVES\n"
        "from raysweep.synthesis import build_synthesis\n"
        "from raysweep.sweep.space import SearchSpace\n"
        "from raysweep import preflight\n"
        "job = load_job('jobs/quickstart.yaml', {'unlearn.method.name': 'mgda', 'unlearn.forget.name': 'npo'})\n"
        "preflight.check_job(job)\n"
        "preflight.check_job(load_job('jobs/quickstart.yaml', {'model.base': 'smollm2-135m'}), data=False)\n"
        "preflight.check_space(SearchSpace.load(job.sweep.search_space), job)\n"
        "assert job.unlearn.method.name == 'mgda'\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_lazy_module_is_the_real_module_on_first_use_and_caches_what_it_read():
    lazy = LazyModule("torch")
    assert "float32" not in vars(lazy)
    assert lazy.float32 is torch.float32 and lazy.Tensor is torch.Tensor
    assert vars(lazy)["float32"] is torch.float32  # the hot path reads it as a plain attribute
    x = lazy.ones(3)
    assert isinstance(x, torch.Tensor) and float(x.sum()) == 3.0
    f = LazyModule("torch.nn.functional")
    assert f.relu is torch.nn.functional.relu
