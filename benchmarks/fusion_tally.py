"""The counts of section 8 of docs/benchmarks.md, computed instead of added up by hand.

    python benchmarks/fusion_tally.py                              # the two tables
    python benchmarks/fusion_tally.py --check docs/benchmarks.md   # and verify the transcription

Input: ``benchmarks/fusion_tally.csv``, one row per independently trained network on that page with the
held-out test-slice Dice of the paper's final map, of Mf alone and of the four exits, transcribed from
the table of the section it names. The networks themselves were made in earlier sessions on other
hosts and are not kept, so the numbers are read from the page; ``--check`` makes sure each value is
printed in its section, so a table that changes without the CSV fails the check (a test runs it).

Prints (markdown):

1. per group, in how many runs Mf is higher than the paper's map, the mean and range of the difference
   in points;
2. per group, in how many runs the paper's map and Mf are above every exit (runs whose table shows all
   four exits);
3. per group, the paper's map and Mf against each exit taken as a fixed method (runs whose table shows
   all four exits): the mean paired difference in points, its standard error over the runs, and in how
   many runs the map is higher. Table 2 compares a map with the best exit of each run, which only masks
   can pick; table 3 compares it with what one could ship instead of it, "always Exit k".
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
from pathlib import Path

DEFAULT_CSV = Path(__file__).with_name("fusion_tally.csv")
# the sections whose synthetic runs share one configuration, seeds 0-6: 20 stage-1 and 6 stage-2 epochs, 96-px
# crop, no SimCLR (`amecam train` defaults to 20 + 8 at 128 px), so their rows describe one recipe over seeds
SEED_SERIES_SECTIONS = ("8c", "8e")
EXITS = ("exit1", "exit2", "exit3", "exit4")
VALUES = ("paper", "attention", *EXITS)
COLUMNS = ("section", "run", "group", "full_length", *VALUES)
GROUPS = {
    "synthetic_flair": "synthetic FLAIR",
    "synthetic_flair_full": "synthetic FLAIR, full length",  # + the sections of its rows, by group_label
    "synthetic_flair_series": "synthetic FLAIR, 20 + 6 epochs, 96 px, no pretraining (8c, 8e)",
    "synthetic_other": "synthetic T1ce, T2, T1, FLAIR + T1ce",
    "lgg": "real LGG FLAIR",
    "crf": "the maps + DenseCRF",
}


def load_rows(path: Path) -> list[dict]:
    """The CSV's rows, values as floats (None where the section's table shows no such map)."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for number, row in enumerate(reader, start=1):
        try:
            for key in VALUES:
                row[key] = float(row[key]) if row[key] else None
                if row[key] is not None and not 0.0 <= row[key] <= 1.0:  # also refuses nan
                    raise ValueError(f"{key} {row[key]} is not a Dice in [0, 1]")
        except (TypeError, ValueError) as err:
            raise SystemExit(f"{path}: data row {number}: {err}") from None
        if row["paper"] is None or row["attention"] is None:
            raise SystemExit(f"{path}: data row {number} ({row['run']}): paper and attention are required")
        rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no runs")
    return rows


def grouped(rows: list[dict]) -> dict[str, list[dict]]:
    groups = {key: [] for key in GROUPS}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
        if row["group"] == "synthetic_flair" and row["full_length"] == "1":
            groups["synthetic_flair_full"].append(row)
            if row["section"] in SEED_SERIES_SECTIONS:
                groups["synthetic_flair_series"].append(row)
    return {key: value for key, value in groups.items() if value}


def above_every_exit(row: dict, key: str) -> bool | None:
    """Whether map ``key`` is strictly above each exit; None if the row lacks an exit."""
    exits = [row[e] for e in EXITS]
    if any(v is None for v in exits):
        return None
    return all(row[key] > v for v in exits)


def group_label(key: str, rows: list[dict]) -> str:
    """The group's row label; the full-length group names its sections, taken from the CSV so they cannot go stale."""
    label = GROUPS.get(key, key)
    if key == "synthetic_flair_full":
        label += f" (sections {', '.join(sorted({r['section'] for r in rows}))})"
    return label


def difference_table(groups: dict[str, list[dict]]) -> list[str]:
    out = ["| runs | Mf higher in | mean difference (Mf - final), points | range |", "|---|---|---|---|"]
    for key, rows in groups.items():
        diffs = [100 * (r["attention"] - r["paper"]) for r in rows]
        higher = sum(d > 0 for d in diffs)
        out.append(
            f"| {group_label(key, rows)} | {higher} of {len(diffs)} | {sum(diffs) / len(diffs):+.2f} "
            f"| {min(diffs):+.1f} to {max(diffs):+.1f} |"
        )
    return out


def exit_table(groups: dict[str, list[dict]]) -> list[str]:
    out = ["| runs with all four exits | paper's map above every exit | Mf above every exit |", "|---|---|---|"]
    for key, rows in groups.items():
        full = [r for r in rows if above_every_exit(r, "paper") is not None]
        if not full:
            continue
        paper = sum(above_every_exit(r, "paper") for r in full)
        mf = sum(above_every_exit(r, "attention") for r in full)
        out.append(f"| {group_label(key, rows)}: {len(full)} | {paper} | {mf} |")
    return out


def per_exit_table(groups: dict[str, list[dict]]) -> list[str]:
    """Table 3 of the module docstring; groups with fewer than two full runs are left out."""
    heads = " | ".join(f"vs Exit {k}" for k in range(1, len(EXITS) + 1))
    out = [f"| runs with all four exits | map | {heads} |", "|---|---|" + "---|" * len(EXITS)]
    for key, rows in groups.items():
        full = [r for r in rows if above_every_exit(r, "paper") is not None]
        if len(full) < 2:  # a standard error needs two runs
            continue
        for value, label in (("paper", "paper's map"), ("attention", "Mf")):
            cells = []
            for exit_key in EXITS:
                diffs = [100 * (r[value] - r[exit_key]) for r in full]
                sem = statistics.stdev(diffs) / len(diffs) ** 0.5
                mean = round(statistics.fmean(diffs), 1) + 0.0  # + 0.0: no "-0.0"
                cells.append(f"{mean:+.1f} ± {sem:.1f} ({sum(d > 0 for d in diffs)})")
            out.append(f"| {group_label(key, rows)}: {len(full)} | {label} | {' | '.join(cells)} |")
    return out


def section_text(docs: str, section: str) -> str:
    """The text of ``## <section>.`` or ``### <section>.`` up to the next numbered heading."""
    heading = re.compile(rf"^#{{2,3}} {re.escape(section)}\. ", re.MULTILINE)
    match = heading.search(docs)
    if match is None:
        raise SystemExit(f"docs: no heading for section {section}")
    following = re.compile(r"^#{2,3} \d+[a-z]?\. ", re.MULTILINE).search(docs, match.end())
    return docs[match.start() : following.start() if following else len(docs)]


def check(rows: list[dict], docs_path: Path) -> list[str]:
    """Every value of every row printed (to three decimals) in the section the row names."""
    if not docs_path.is_file():
        raise SystemExit(f"{docs_path}: no such file")
    docs = docs_path.read_text(encoding="utf-8")
    problems = []
    for row in rows:
        text = section_text(docs, row["section"])
        for key in VALUES:
            if row[key] is not None and not re.search(rf"(?<![\d.]){row[key]:.3f}(?!\d)", text):
                problems.append(f"section {row['section']}, {row['run']}: {key} {row[key]:.3f} is not in the section")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="the transcribed runs (default: %(default)s)")
    parser.add_argument("--check", type=Path, metavar="DOCS", help="verify every value against this markdown page")
    args = parser.parse_args(argv)

    rows = load_rows(args.csv)
    if args.check is not None:
        problems = check(rows, args.check)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(f"{len(problems)} value(s) of {args.csv.name} not found in {args.check}", file=sys.stderr)
            return 1
        print(f"{len(rows)} runs of {args.csv.name}: every value is printed in its section of {args.check}")
    groups = grouped(rows)
    print("\n".join(difference_table(groups)))
    print()
    print("\n".join(exit_table(groups)))
    print()
    print("\n".join(per_exit_table(groups)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `fusion_tally.py | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
