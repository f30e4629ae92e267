"""Hub datasets through ``datasets``, tested on local copies laid out like the hub repositories
(a README with a ``configs`` header, parquet or JSON data files): TOFU as parquet, MUSE-News and
WMDP as JSON, built from the shared data; the rows raysweep reads must be the original rows."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysweep.data.hub import LAYOUTS, materialise
from raysweep.data.tofu import load_jsonl, load_tofu
from raysweep.spec import JobSpecError, load_job

from ..conftest import SHARED_DATA, tiny_job


def make_repo(root, files: dict, fmt: str):
    """``files``: {(config, split): rows}. Writes data files and the README configs header."""
    lines = ["---", "configs:"]
    by_config: dict = {}
    for (config, split), rows in files.items():
        rel = f"{config}/{split}-00000-of-00001.{fmt}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        by_config.setdefault(config, []).append((split, rel))
    for config, splits in by_config.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {rel}" for split, rel in splits]
    lines += ["---", "# a local copy of a hub dataset repository"]
    (root / "README.md").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tofu_repo(tmp_path_factory):
    tofu = SHARED_DATA / "tofu"
    configs = ["full", "forget10", "retain90", "holdout10", "forget10_perturbed", "retain_perturbed"]
    files = {(c, "train"): load_jsonl(tofu / f"{c}.jsonl") for c in configs}
    return make_repo(tmp_path_factory.mktemp("locuslab_TOFU"), files, "parquet")


def test_tofu_from_a_parquet_repository_gives_the_same_rows(tofu_repo, tmp_path, shared_cache):
    path = tiny_job(tmp_path, SHARED_DATA / "tofu", shared_cache)
    job = load_job(path, {"data.path": str(tofu_repo), "data.subset": None, "data.forget_split": "forget10",
                          "cache_dir": str(tmp_path / "cache")})
    assert job.data.path != tofu_repo and (job.data.path / "forget10.jsonl").is_file()
    got = load_tofu(job.data.path, "forget10")
    want = load_tofu(SHARED_DATA / "tofu", "forget10")
    assert got.forget == want.forget and got.retain == want.retain and got.holdout == want.holdout
    assert got.perturbed == want.perturbed
    # once: a second load reuses the materialised folder
    stamp = (job.data.path / "forget10.jsonl").stat().st_mtime_ns
    again = load_job(path, {"data.path": str(tofu_repo), "data.subset": None, "cache_dir": str(tmp_path / "cache")})
    assert (again.data.path / "forget10.jsonl").stat().st_mtime_ns == stamp


def test_muse_and_wmdp_from_json_repositories(tmp_path):
    muse = SHARED_DATA / "muse_news"
    files = {cs: load_jsonl(muse / name)[:50] for name, cs in LAYOUTS["muse"].items()}
    out = materialise(str(make_repo(tmp_path / "MUSE-News", files, "json")), "muse", tmp_path / "muse_out")
    for name in LAYOUTS["muse"]:
        assert load_jsonl(out / name) == load_jsonl(muse / name)[:50], name

    wmdp = SHARED_DATA / "wmdp"
    files = {(c, "test"): load_jsonl(wmdp / f"{c}.jsonl") for c in ("wmdp-bio", "wmdp-cyber")}
    repo = make_repo(tmp_path / "wmdp", files, "json")
    job = load_job(tiny_job(tmp_path, SHARED_DATA / "tofu"), {"eval.mcq_data": str(repo),
                                                             "cache_dir": str(tmp_path / "cache")})
    from raysweep.evaluation.mcq import load_mcq

    assert load_mcq(job.eval.mcq_data, "wmdp_bio", 30, 0) == load_mcq(SHARED_DATA, "wmdp_bio", 30, 0)
    assert not (job.eval.mcq_data / "wmdp" / "wmdp-chem.jsonl").exists()  # a config the repo lacks


def test_an_unreachable_hub_name_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JobSpecError) as err:
        load_job(tiny_job(tmp_path, SHARED_DATA / "tofu"), {"data.path": "locuslab/TOFU-nonexistent",
                                                           "cache_dir": str(tmp_path / "cache")})
    msg = str(err.value)
    assert msg.startswith("data.path: 'locuslab/TOFU-nonexistent' is not allowed (not a local folder")
    assert "\n" not in msg
