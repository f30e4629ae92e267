"""Search spaces: validation names the key; Optuna samples a method's parameters only when drawn."""

import optuna
import pytest
import yaml

from raysweep.sweep.space import SearchSpace, SearchSpaceError

from ..conftest import REPO


def space(raw):
    s = SearchSpace(raw, "s.yaml")
    s.validate()
    return s


@pytest.mark.parametrize("raw,message", [
    ({"methods": {}}, "s.yaml: methods: unknown key (allowed: method, forget, retain, unlearn); did you mean 'method'?"),
    ({"method": {"sagoo": {}}}, "s.yaml: method.sagoo: unknown name (allowed: graddiff"),
    ({"method": {"sago": {"alpah": 1}}}, "s.yaml: method.sago.alpah: unknown hyperparameter (allowed: gamma, alpha); did you mean 'alpha'?"),
    ({"method": {"sago": {"alpha": {"loguniform": [0, 1]}}}}, "s.yaml: method.sago.alpha.loguniform: [0, 1] is not allowed (low > 0 on a log scale)"),
    ({"method": {"sago": {"alpha": {"uniform": [2, 1]}}}}, "s.yaml: method.sago.alpha.uniform: [2, 1] is not allowed (low < high)"),
    ({"method": {"sago": {"alpha": {"logunifrom": [1, 2]}}}}, "did you mean 'loguniform'?"),
    ({"unlearn": {"lrr": {"loguniform": [1e-5, 1e-3]}}}, "s.yaml: unlearn.lrr: not searchable"),
    ({"forget": {"npo": {"beta": {"int": [1.5, 3]}}}}, "(integers)"),
])
def test_bad_spaces_name_the_key(raw, message):
    with pytest.raises(SearchSpaceError) as err:
        space(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_conditional_parameters_with_a_real_optuna_study():
    s = space({"method": {"sago": {"alpha": {"loguniform": [0.1, 1.0]}}, "ngdiff": {},
                          "pcgrad_r": {"alpha": 0.5, "scope": {"choice": ["module", "global"]}}},
               "forget": {"npo": {"beta": {"uniform": [0.05, 0.5]}}},
               "unlearn": {"lr": {"loguniform": [1e-5, 1e-3]}, "steps": {"int": [5, 10]}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        s.define_by_run(trial)
        params = trial.params
        method = params["method"]
        seen.add(method)
        assert all(k.startswith(f"method.{method}.") for k in params if k.startswith("method."))
        o = s.overrides(params)
        assert o["unlearn.method"]["name"] == method
        if method == "pcgrad_r":
            assert o["unlearn.method"]["alpha"] == 0.5 and o["unlearn.method"]["scope"] in ("module", "global")
        if method == "sago":
            assert 0.1 <= o["unlearn.method"]["alpha"] <= 1.0
        assert o["unlearn.forget"]["name"] == "npo" and 0.05 <= o["unlearn.forget"]["beta"] <= 0.5
        assert 5 <= o["unlearn.steps"] <= 10
        study.tell(trial, 0.0)
    assert seen == {"sago", "ngdiff", "pcgrad_r"}


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_are_valid(path):
    SearchSpace.load(path)
    assert yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")))
def test_shipped_jobs_validate_and_say_how_to_launch(path):
    from raysweep.spec import load_job

    load_job(path)
    assert "raysweep " in path.read_text().split("\n\n")[0], "the job's header says how to launch it"


def test_sweep_objectives_are_checked_against_the_benchmarks(tmp_path):
    from raysweep.spec import JobSpecError, load_job

    job = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    job["data"]["path"] = str(REPO.parent / "shared" / "data" / "tofu")
    job["sweep"]["search_space"] = str(REPO / "search_spaces" / "quickstart.yaml")
    job["sweep"]["objectives"] = {"forget_rouge": "min", "retain_rougeL_recall": "max"}
    p = tmp_path / "j.yaml"
    p.write_text(yaml.safe_dump(job))
    with pytest.raises(JobSpecError, match="metric 'forget_rouge' is not allowed .*did you mean 'forget_rougeL_recall'"):
        load_job(p)
