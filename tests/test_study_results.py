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


def test_export_appends_new_points_and_keeps_the_rows_it_holds_byte_for_byte(tmp_path):
    # A CSV as the first export wrote it: 14 columns, no cut_pairs.
    committed = (ROOT / "results/study_points.csv").read_text().splitlines(keepends=True)
    old_rows = [line for line in committed if line.startswith("study-paired-graddiff-o0-s0,")][:2]
    assert len(old_rows) == 2 and all(line.count(",") == 13 for line in old_rows)  # 14 fields
    path = tmp_path / "points.csv"
    first = mt.CSV_FIELDS[:14]
    path.write_text(",".join(first) + "\n" + "".join(old_rows))
    held = next(csv.DictReader(io.StringIO(",".join(first) + "\n" + old_rows[0])))
    fresh = {**held, "sweep": "study-extended-sago-o0-s0", "step": 24, "commit": "abc1234", "cut_pairs": "374"}
    again = {**held, "forget_quality": "0.5", "cut_pairs": "374"}  # a point it holds: not rewritten
    assert mt.append_points(path, [fresh, again]) == 1
    lines = path.read_text().splitlines(keepends=True)
    assert lines[0] == ",".join(mt.CSV_FIELDS) + "\n" and lines[1:3] == old_rows
    rows = list(csv.DictReader(io.StringIO("".join(lines))))
    assert [r["cut_pairs"] for r in rows] == [None, None, "374"]
    assert rows[2]["sweep"] == "study-extended-sago-o0-s0" and rows[2]["step"] == "24"
    assert mt._cuts(rows) == {"0": "374"}


def test_kept_utility_at_matched_forgetting_worked_example():
    # (lr, step, FQ, MU), target utility 0.8: at FQ >= 1e-2 the best utility is 0.4 (FQ 0.05), not
    # the 0.7 of the point that forgets less; no point reaches 0.5 -> 0, not "missing".
    pts = [(1e-3, 12, 2e-3, 0.7), (1e-3, 24, 0.05, 0.4), (3e-2, 12, 0.2, 0.0), (3e-3, 48, 0.011, 0.1)]
    assert mt._kept0(pts, 0.8, 1e-3) == 0.7 / 0.8
    assert mt._kept0(pts, 0.8, 1e-2) == 0.4 / 0.8
    assert mt._kept0(pts, 0.8, 0.1) == 0.0
    assert mt._kept0(pts, 0.8, 0.5) == 0.0


def test_the_csv_holds_the_extended_budget_and_the_tuned_comparison():
    printed = printed_tables(ROOT / "results/study_points.csv")
    heads = [t.splitlines()[0] for t in printed]
    assert any(h.startswith("== SAGO's extended budget: utility kept at matched forgetting") for h in heads)
    assert any(h.startswith("== Tuned comparison") for h in heads)
    # every table with subsets names their cut-pair counts
    for t in printed:
        if "o0/s0" in t or "o0 " in t:
            assert re.search(r"cut pairs.*\b374\b", t, flags=re.S) and re.search(r"cut pairs.*\b413\b", t, flags=re.S), t[:200]


def test_smollm2_table_worked_example(tmp_path):
    # Two trials and the two calibration models of one subset; kept = utility / the target's (0.4),
    # the extra metrics from the JSON column, the target's from its "target/" keys.
    head = ",".join(mt.CSV_FIELDS) + "\n"

    def row(sweep, trial, step, method, lr, fq, mu, metrics):
        return (f'{sweep},{trial},{step},{method},{"npo" if method else ""},15,{"0" if method else ""},{lr},"{{}}",'
                f'{fq},{mu},{"0.002" if method else ""},{"0.4" if method else ""},abc1234,61,"{metrics}"\n')

    tm = '{""forget_answer_loss"": 2.5, ""target/forget_answer_loss"": 0.5}'
    body = [row("study-smollm2-graddiff-o15-s0", "t1", 10, "graddiff", "0.001", 0.01, 0.3, tm),
            row("study-smollm2-sago-o15-s0", "t2", 10, "sago", "0.003", 0.5, 0.1, "{}"),
            row("study-smollm2-calibration-o15", "untuned", "", "", "", 1e-5, 0.35, '{""forget_answer_loss"": 3.1}'),
            row("study-smollm2-calibration-o15", "reference_seed0", "", "", "", 1.0, 0.38, "{}")]
    path = tmp_path / "points.csv"
    path.write_text(head + "".join(body))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        mt.smollm2_table(mt.read_points(path))
    lines = {ln.split()[0]: ln.split() for ln in out.getvalue().splitlines()[2:6]}
    assert out.getvalue().startswith("== SmolLM2-135M-Instruct") and "raysweep commit abc1234" in out.getvalue()
    assert lines["untuned"][1:5] == ["1e-05", "0.350", f"{0.35 / 0.4:.2f}", "3.100"]
    assert lines["target"][1:5] == ["0.002", "0.400", "1.00", "0.500"]
    assert lines["graddiff"][1:6] == ["1e-03", "0.01", "0.300", f"{0.3 / 0.4:.2f}", "2.500"]
    assert lines["retain"][2:4] == ["1", "0.380"] and lines["retain"][-1] == "61"
