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
    assert len(lines) == 5
    for line in lines:
        assert line in section
