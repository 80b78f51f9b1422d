"""benchmarks/fusion_tally.py: the counts of docs/benchmarks.md section 8 come from a command, and the
runs it counts are the ones the page prints."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs" / "benchmarks.md"


@pytest.fixture(scope="module")
def tally():
    spec = importlib.util.spec_from_file_location("fusion_tally", REPO / "benchmarks" / "fusion_tally.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_transcribed_value_is_printed_in_its_section(tally):
    rows = tally.load_rows(tally.DEFAULT_CSV)
    assert {r["group"] for r in rows} == {"synthetic_flair", "synthetic_other", "lgg", "crf"}
    assert tally.check(rows, DOCS) == []


def test_check_catches_a_value_the_section_does_not_print(tally, tmp_path):
    text = tally.DEFAULT_CSV.read_text(encoding="utf-8")
    altered = text.replace("8c,train_default_96_seed0,synthetic_flair,1,0.631,", "8c,train_default_96_seed0,synthetic_flair,1,0.987,")
    assert altered != text
    path = tmp_path / "tally.csv"
    path.write_text(altered, encoding="utf-8")
    problems = tally.check(tally.load_rows(path), DOCS)
    assert problems == ["section 8c, train_default_96_seed0: paper 0.987 is not in the section"]
    assert tally.main(["--csv", str(path), "--check", str(DOCS)]) == 1


def test_section_8_states_the_computed_counts(tally):
    """Each 'N of M' of section 8's Mf-vs-final table is what the script computes."""
    groups = tally.grouped(tally.load_rows(tally.DEFAULT_CSV))
    section = tally.section_text(DOCS.read_text(encoding="utf-8"), "8")
    table = {line.split("|")[1].strip(): line for line in section.splitlines() if line.strip().startswith("| ")}
    expected_rows = {"synthetic_flair": "synthetic FLAIR", "synthetic_other": "synthetic T1ce", "lgg": "real LGG", "crf": "the maps + DenseCRF"}
    for key, prefix in expected_rows.items():
        diffs = [r["attention"] - r["paper"] for r in groups[key]]
        line = next(v for k, v in table.items() if k.startswith(prefix))
        assert f"{sum(d > 0 for d in diffs)} of {len(diffs)}" in line
        mean = 100 * sum(diffs) / len(diffs)
        stated = float(re.search(r"\| \**([+-][\d.]+)( points)?\** \|", line).group(1))
        assert stated == pytest.approx(mean, abs=0.051)


def test_above_every_exit_needs_all_four_exits(tally):
    row = {"paper": 0.7, "attention": 0.8, "exit1": 0.6, "exit2": 0.75, "exit3": None, "exit4": 0.1}
    assert tally.above_every_exit(row, "paper") is None
    row["exit3"] = 0.2
    assert tally.above_every_exit(row, "paper") is False
    assert tally.above_every_exit(row, "attention") is True


def test_a_bad_csv_is_one_line(tally, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("section,run,group,full_length,paper,attention,exit1,exit2,exit3,exit4\n1,x,lgg,0,abc,0.5,,,,\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="data row 1"):
        tally.load_rows(path)
    for bad in ("nan", "1.5", "-0.1"):
        path.write_text(f"section,run,group,full_length,paper,attention,exit1,exit2,exit3,exit4\n1,x,lgg,0,0.4,{bad},,,,\n", encoding="utf-8")
        with pytest.raises(SystemExit, match=r"data row 1: attention .* is not a Dice in \[0, 1\]"):
            tally.load_rows(path)
    path.write_text("section,run,group,paper,attention\n1,x,lgg,0.4,0.5\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="missing column.*full_length"):
        tally.load_rows(path)
    path.write_text("section,run,group,full_length,paper,attention,exit1,exit2,exit3,exit4\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no runs"):
        tally.load_rows(path)
    with pytest.raises(SystemExit, match="no such file"):
        tally.load_rows(tmp_path / "missing.csv")


def test_section_8_prints_the_computed_exit_counts(tally):
    groups = tally.grouped(tally.load_rows(tally.DEFAULT_CSV))
    section = tally.section_text(DOCS.read_text(encoding="utf-8"), "8")
    lines = tally.exit_table(groups)[2:]
    assert len(lines) == 6  # the groups of exit_table
    for line in lines:
        assert line in section


def test_per_exit_table_pairs_each_run(tally):
    rows = [
        {"paper": 0.70, "attention": 0.80, "exit1": 0.60, "exit2": 0.75, "exit3": 0.50, "exit4": 0.40},
        {"paper": 0.60, "attention": 0.65, "exit1": 0.70, "exit2": 0.55, "exit3": 0.50, "exit4": 0.40},
        {"paper": 0.50, "attention": 0.60, "exit1": 0.30, "exit2": None, "exit3": 0.50, "exit4": 0.40},
    ]
    lines = tally.per_exit_table({"lgg": rows})
    assert len(lines) == 4  # header, rule, the paper's map, Mf; the third run lacks Exit 2
    # paper - exit1: +10 and -10 points -> mean 0, sd 14.14, se 10.0, higher in 1
    # paper - exit2: -5 and +5 -> 0 ± 5.0 (1); Mf - exit2: +5, +10 -> +7.5 ± 2.5 (2)
    assert lines[2] == "| real LGG FLAIR: 2 | paper's map | +0.0 ± 10.0 (1) | +0.0 ± 5.0 (1) | +15.0 ± 5.0 (2) | +25.0 ± 5.0 (2) |"
    assert lines[3].split(" | ")[3] == "+7.5 ± 2.5 (2)"
    assert tally.per_exit_table({"lgg": rows[:1] + rows[2:]}) == lines[:2]  # one full run: no standard error


def test_section_8_prints_the_per_exit_comparison(tally):
    groups = tally.grouped(tally.load_rows(tally.DEFAULT_CSV))
    section = tally.section_text(DOCS.read_text(encoding="utf-8"), "8")
    lines = tally.per_exit_table(groups)[2:]
    assert len(lines) == 12
    for line in lines:
        assert line in section
