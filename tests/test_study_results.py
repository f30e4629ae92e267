"""RESULTS.md's tables are what `jobs/study/make_tables.py --from results/study_points.csv` prints
(issue 27): every fenced block of RESULTS.md that opens with "== " is one printed table, in order,
character for character, and the CSV names the raysweep commit of every point."""

import contextlib
import csv
import functools
import importlib.util
import io
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("make_tables", ROOT / "jobs/study/make_tables.py")
mt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mt)


@functools.lru_cache(maxsize=2)  # one make_tables run serves both tests (its bootstraps take seconds)
def printed_tables(csv_path: Path) -> tuple[str, ...]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mt.main(["--from", str(csv_path)]) == 0
    return tuple(t.strip("\n") for t in out.getvalue().split("\n\n") if t.strip())


def results_tables(md: str) -> list[str]:
    return [b for b in re.findall(r"^```text\n(.*?)\n```$", md, flags=re.S | re.M) if b.startswith("== ")]


def test_results_md_tables_are_regenerated_from_the_committed_csv():
    printed = printed_tables(ROOT / "results/study_points.csv")
    in_md = results_tables((ROOT / "RESULTS.md").read_text())
    assert printed, "make_tables.py --from printed no table"
    assert [t.splitlines()[0] for t in in_md] == [t.splitlines()[0] for t in printed]
    for md, new in zip(in_md, printed):
        assert md == new


def test_every_point_names_its_commit_and_every_table_prints_it():
    with (ROOT / "results/study_points.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(re.fullmatch(r"[0-9a-f]{7,40}", r["commit"]) for r in rows)
    for table in printed_tables(ROOT / "results/study_points.csv"):
        assert re.search(r"raysweep commit [0-9a-f]{7}", table.splitlines()[0])


def test_a_csv_without_a_column_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "points.csv"
    bad.write_text("sweep,trial\nx,y\n")
    try:
        mt.main(["--from", str(bad)])
    except SystemExit as err:
        assert "has no column 'step'" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("a CSV without the columns was accepted")
