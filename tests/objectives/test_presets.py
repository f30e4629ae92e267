"""`unlearn.preset: paper` (raysweep/presets.py): a job gets the paper defaults, explicit values
win, and the shipped TOFU search space covers every preset value a sweep can reach."""

import itertools
from pathlib import Path

import pytest

from raysweep.objectives import OBJECTIVES
from raysweep.presets import PAPER, PRESETS, FromForget, resolve
from raysweep.spec import JobSpecError, apply_preset, load_job, parse_job
from raysweep.sweep.space import SearchSpace
from raysweep.synthesis import SYNTHESIS

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "search_spaces" / "tofu_methods.yaml"


def job(tofu_dir, split="forget10", **unlearn):
    return {"data": {"path": str(tofu_dir), "forget_split": split},
            "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}, "preset": "paper", **unlearn}}


@pytest.mark.parametrize("split,beta,gamma", [("forget05", 2.5, 0.1375), ("forget10", 4.5, 0.125),
                                              ("forget01", 2.5, 0.1375)])
def test_simnpo_job_gets_the_paper_values_for_its_split(tofu_dir, split, beta, gamma):
    spec = parse_job(job(tofu_dir, split, forget={"name": "simnpo"}, method={"name": "graddiff"})).unlearn
    assert spec.forget.params == {"beta": beta, "delta": 0.0}
    assert spec.method.params == {"gamma": gamma, "alpha": 1.0}
    assert (spec.lr, spec.weight_decay, spec.schedule) == (1e-5, 0.01, "linear")


def test_default_method_npo_and_gru_values(tofu_dir):
    spec = parse_job(job(tofu_dir, forget={"name": "npo"})).unlearn  # no method: graddiff, written out
    assert spec.method.name == "graddiff" and spec.method.params == {"gamma": 1.0, "alpha": 1.0}
    assert spec.forget.params == {"beta": 0.1}
    gru = parse_job(job(tofu_dir, forget={"name": "simnpo"}, method={"name": "gru"})).unlearn
    assert gru.method.params == {"mu": 0.8, "alpha": 0.1}
    assert (gru.schedule, gru.weight_decay, gru.lr) == ("constant", 0.01, 1e-5)
    sago = parse_job(job(tofu_dir, forget={"name": "simnpo"}, method={"name": "sago"})).unlearn
    assert sago.method.params == {"gamma": 1.0, "alpha": 0.1}
    ngdiff = parse_job(job(tofu_dir, method={"name": "ngdiff"})).unlearn
    assert ngdiff.method.params == {"autolr": True}


def test_rmu_values_and_the_retain_layer_follows_the_forget_layer(tofu_dir):
    spec = parse_job(job(tofu_dir, forget={"name": "rmu"}, retain={"name": "rmu_retain"})).unlearn
    assert spec.forget.params == {"layer": 7, "steering_coeff": 6.5}
    assert spec.retain[0].params == {"layer": 7}
    assert spec.method.params == {"gamma": 1.0, "alpha": 1200.0} and spec.lr == 5e-5
    mine = parse_job(job(tofu_dir, forget={"name": "rmu", "layer": 1}, retain={"name": "rmu_retain"})).unlearn
    assert mine.retain[0].params == {"layer": 1}  # steered and retained at the same layer


def test_explicit_values_win(tofu_dir, tmp_path):
    raw = job(tofu_dir, forget={"name": "simnpo", "beta": 3.0}, method={"name": "graddiff", "gamma": 0.5},
              lr=3e-4, schedule="constant")
    spec = parse_job(raw).unlearn
    assert spec.forget.params == {"beta": 3.0, "delta": 0.0}
    assert spec.method.params == {"gamma": 0.5, "alpha": 1.0}
    assert (spec.lr, spec.schedule, spec.weight_decay) == (3e-4, "constant", 0.01)
    # a --set override is explicit too
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(tofu_dir)))
    assert load_job(path, {"unlearn.weight_decay": 0.0}).unlearn.weight_decay == 0.0
    assert load_job(path).unlearn.weight_decay == 0.01


def test_without_a_preset_nothing_changes(tofu_dir):
    raw = job(tofu_dir, forget={"name": "npo"})
    del raw["unlearn"]["preset"]
    spec = parse_job(raw).unlearn
    assert spec.preset is None and spec.lr == 1e-4 and spec.forget.params == {}
    assert apply_preset(raw) is raw


def test_unknown_preset_is_a_one_line_error(tofu_dir):
    with pytest.raises(JobSpecError, match=r"unlearn.preset: 'papers' is not allowed"):
        parse_job(job(tofu_dir, preset="papers"))


def test_every_entry_names_real_parameters_and_cites_the_spec():
    for entry in PAPER:
        assert entry.spec.startswith("spec "), entry
        if entry.section == "unlearn":
            from raysweep.spec import UnlearnSpec

            assert set(entry.values) <= set(UnlearnSpec.model_fields), entry
            continue
        registry = SYNTHESIS if entry.section == "method" else OBJECTIVES
        assert set(entry.values) <= set(registry.get(entry.name).hyperparameters()), entry


def test_muse_simnpo_values():
    values = resolve("paper", {"forget": "simnpo", "method": "graddiff", "benchmark": "muse"})
    assert values[("forget", "simnpo")] == {"beta": 0.7, "delta": 0.1}
    assert values[("method", "graddiff")] == {"gamma": 1.0, "alpha": 0.1}


def inside(value, spec):
    if not isinstance(spec, dict):
        return value == spec
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return value in args
    return args[0] <= value <= args[1]


@pytest.mark.parametrize("split", ["forget01", "forget05", "forget10"])
def test_shipped_search_space_covers_every_reachable_preset_value(split):
    """For each (method, forget) a TOFU sweep can draw: every preset value is inside the space's
    range for that parameter, or the space leaves it to the default and the default is the value."""
    space = SearchSpace.load(SPACE).raw
    registries = {"method": SYNTHESIS, "forget": OBJECTIVES}
    checked = 0
    for method, forget in itertools.product(space["method"], space["forget"]):
        facts = {"method": method, "forget": forget, "benchmark": "tofu", "forget_split": split}
        for (section, name), values in resolve("paper", facts).items():
            if section == "unlearn":
                block = space["unlearn"]
            elif section in registries and name == facts[section]:
                block = space[section][name] or {}
                defaults = registries[section].get(name)()
            else:
                continue
            for key, value in values.items():
                assert not isinstance(value, FromForget)
                if key in block:
                    assert inside(value, block[key]), f"{split} {method}+{forget}: {section}.{key} = {value} not in {block[key]}"
                else:
                    assert section != "unlearn", f"unlearn.{key} is not searched"
                    assert getattr(defaults, key) == value, f"{section}.{name}.{key}: default != preset {value}"
                checked += 1
    assert checked > 50


def test_only_the_paper_preset_exists():
    assert list(PRESETS) == ["paper"]
