"""Helpers shared by the benchmark scripts: case-level splits as datalists, running amecam, timing.

Every benchmark drives the public ``amecam`` commands in subprocesses, so each number in
``docs/benchmarks.md`` comes from commands anyone can rerun; outputs go under ``bench_output/``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMECAM_SHARED_DATA", REPO.parent / "shared" / "data"))
OUTPUT = Path(os.environ.get("AMECAM_BENCH_OUTPUT", REPO / "bench_output"))


def amecam(*args: str, log: Path | None = None) -> float:
    """Run ``amecam ARGS`` (the installed console script of this interpreter); returns wall seconds."""
    executable = Path(sys.executable).with_name("amecam")
    command = [str(executable), *map(str, args)]
    print("$ amecam " + shlex.join(map(str, args)), flush=True)
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") if log else open(os.devnull, "w", encoding="utf-8") as sink:
        result = subprocess.run(command, stdout=sink if log else None, stderr=subprocess.STDOUT if log else None)
    if result.returncode != 0:
        raise SystemExit(f"amecam {' '.join(map(str, args))} failed with status {result.returncode}" + (f" (see {log})" if log else ""))
    return time.perf_counter() - started


def write_datalist(path: Path, cases: list, modalities: tuple[str, ...]) -> Path:
    """A datalist JSON naming each case's files, so a split is explicit and reusable."""
    entries = []
    for case in cases:
        entry = {"case": case.case_id, **{m: str(case.images[m].resolve()) for m in modalities}}
        if case.label is not None:
            entry["label"] = str(case.label.resolve())
        if case.brainmask is not None:
            entry["brainmask"] = str(case.brainmask.resolve())
        entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": entries}, indent=1) + "\n", encoding="utf-8")
    return path


def split_by_case(cases: list, n_test: int, seed: int, fold: int = 0) -> tuple[list, list]:
    """Seeded case-level split: ``n_test`` cases held out, the rest for training.

    ``fold`` k holds out the k-th block of ``n_test`` cases of the same seeded order, so folds 0 to
    ``len(cases) // n_test - 1`` of one seed are a cross-validation: every case is tested once (fold 0 is the
    split without ``fold``).
    """
    import numpy as np

    if not 0 <= fold < len(cases) // n_test:
        raise SystemExit(f"--fold must be 0 to {len(cases) // n_test - 1} for {len(cases)} cases, {n_test} held out")
    order = np.random.default_rng(seed).permutation(len(cases))
    held = set(order[fold * n_test:(fold + 1) * n_test].tolist())
    test = sorted((cases[i] for i in held), key=lambda c: c.case_id)
    train = sorted((cases[i] for i in range(len(cases)) if i not in held), key=lambda c: c.case_id)
    return train, test


class BadInput(Exception):
    """A file a benchmark script was pointed at that it cannot use; the script prints it in one line, status 2."""


def read_json(path: Path, report: bool = False) -> dict:
    """The JSON object in ``path``; with ``report``, also checks that it is a report of ``amecam evaluate``."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BadInput(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(content, dict):
        raise BadInput(f"{path}: not a JSON object")
    if report and not isinstance(content.get("methods"), dict):
        raise BadInput(f"{path}: no methods; give the reports of amecam evaluate")
    return content


def machine() -> str:
    import torch

    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return text


def table(report: dict, rows: list[str] | None = None) -> str:
    """Compact markdown table of a report.json: slice and volume Dice/IoU/HD95 per method."""
    from amecam_cli.evaluation import table_markdown

    return table_markdown(report, rows)


def train_and_evaluate(out: Path, train_list: Path, test_list: Path, *, modality: str, epochs: int, attention_epochs: int,
                       image_size: int, seed: int, methods: str = "all", budget: int = 32, crf: bool = True,
                       stem_stride: int | None = None, extra_train: list | None = None,
                       extra_evaluate: list | None = None) -> tuple[dict, dict]:
    """``amecam train`` on ``train_list`` (resumed or reused when already there), then ``amecam evaluate`` on ``test_list``.

    Returns:
        ``(report, timings)``.
    """
    log = out / "commands.log"
    run = out / "run"
    timings = {}
    train_args = ["train", "--data_dir", train_list, "--output_dir", run, "--modality", modality, "--epochs", epochs,
                  "--attention_epochs", attention_epochs, "--image_size", image_size, "--seed", seed, "--device", "cpu",
                  *([] if stem_stride is None else ["--stem_stride", stem_stride]), *(extra_train or [])]
    if (run / "models" / "model.ts").is_file():
        print(f"reusing the trained bundle in {run}")
    else:
        resume = ["--resume"] if (run / "configs" / "amecam_train.json").is_file() else []
        timings["train"] = amecam(*train_args, *resume, log=log)
    report_dir = out / "report"
    evaluate_args = ["evaluate", "--data_dir", test_list, "--bundle", run, "-o", report_dir, "--methods", methods,
                     "--budget", budget, "--device", "cpu", "--overwrite", *(["--crf"] if crf else []), *(extra_evaluate or [])]
    timings["evaluate"] = amecam(*evaluate_args, log=log)
    return json.loads((report_dir / "report.json").read_text(encoding="utf-8")), timings
