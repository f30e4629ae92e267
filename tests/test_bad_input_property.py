"""Property: whatever a valid job or search-space file is mutated into, validation answers with a
one-line error (or accepts it) - never a traceback (issue 12, item 1)."""

from __future__ import annotations

import copy

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .conftest import tiny_job  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["sago", "npo", "nll", "tiny-lama", "/nonexistent", "", "1e-3", ".inf"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


ERRORS: set = set()


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, base: dict):
    """A structural mutation (replace / delete / add a key) of a copy of ``base``."""
    raw = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(raw) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = raw
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return raw


@st.composite
def corrupted_text(draw, text: str):
    """A textual mutation: truncation, inserted characters or bytes (YAML syntax, encoding)."""
    data = text.encode()
    pos = draw(st.integers(0, len(data)))
    op = draw(st.sampled_from(["truncate", "insert", "bytes"]))
    if op == "truncate":
        return data[:pos]
    if op == "insert":
        return data[:pos] + draw(st.sampled_from([":", "[", "{", "\t", "- ", "'", "\"", "&a", "*b", "!!python/object"])).encode() + data[pos:]
    return data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tofu_dir):
    root = tmp_path_factory.mktemp("prop")
    job = yaml.safe_load(tiny_job(root, tofu_dir).read_text())
    space = {"method": {"graddiff": {"alpha": {"uniform": [0.5, 2.0]}}, "sago": {}},
             "forget": {"npo": {"beta": {"loguniform": [0.05, 1.0]}}},
             "unlearn": {"lr": {"loguniform": [1e-4, 1e-3]}, "steps": {"int": [2, 4]}}}
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8}
    job["sweep"] = {"search_space": str(root / "space.yaml"), "num_trials": 2,
                    "objectives": {"forget_answer_loss": "max", "retain_answer_loss": "min"},
                    "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "storage_path": str(root / "runs")}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    return root, job, space


def _validate(capsys, job_path) -> int:
    """The whole launch validation in this process; anything but exit 0/2 with one line fails."""
    import ray

    from raysweep.cli import main

    code = main(["launch", "--dry-run", str(job_path)])
    err = capsys.readouterr().err
    if code == 2:
        ERRORS.add(err.split(":", 3)[-1][:60])
    assert code in (0, 2)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("raysweep: error: "), err
    assert not ray.is_initialized()
    return code


def _write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(yaml.safe_dump(content))


def _validate_mutations(capsys, source: dict, write_to, job_file) -> list[int]:
    """Hypothesis mutates ``source`` (structure and text) into ``write_to``; returns the exit codes
    of validating ``job_file`` after each (``_validate`` fails the test on any traceback)."""
    codes: list[int] = []

    @SETTINGS
    @given(st.one_of(mutated(source), corrupted_text(yaml.safe_dump(source))))
    def check(content):
        _write(write_to, content)
        codes.append(_validate(capsys, job_file))

    check()
    return codes


def test_mutated_job_files_never_traceback(base, capsys):
    root, job, space = base
    codes = _validate_mutations(capsys, job, root / "job.yaml", root / "job.yaml")
    print(f"\njob mutations: {len(codes)} examples, {codes.count(2)} rejected, {len(ERRORS)} distinct messages")
    assert codes.count(2) > len(codes) // 2  # the mutations do reach validation errors


def test_mutated_search_spaces_never_traceback(base, capsys):
    root, job, space = base
    _write(root / "job.yaml", job)
    codes = _validate_mutations(capsys, space, root / "space.yaml", root / "job.yaml")
    print(f"\nspace mutations: {len(codes)} examples, {codes.count(2)} rejected, {len(ERRORS)} distinct messages")
    assert codes.count(2) > len(codes) // 3 and 0 in codes  # both outcomes are exercised
