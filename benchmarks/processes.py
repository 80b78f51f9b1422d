"""Training in one process against several (``amecam train --nproc_per_node N``), side by side.

Trains the same run (the synthetic benchmark cohort's 16 training cases, seed 0) once per process count
and reports each stage's training throughput from the stage summaries, the wall time of the whole
command and the validation AUC it reached. On a CPU the processes share the cores (torchrun gives each
``cores / N`` threads); on a machine with N GPUs each process has its own.

    python benchmarks/processes.py --nprocs 1,2 --epochs 2 --attention_epochs 1 --device cpu --out bench_output/processes_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, amecam, machine, write_datalist  # noqa: E402
from speed import _benchmark_split  # noqa: E402


def _rate(summary: dict) -> float:
    """Slices per second over a stage's epochs (each epoch's slices over its seconds)."""
    history = summary["history"]
    slices = sum(record["train_slices_per_s"] * record["seconds"] for record in history)
    return slices / sum(record["seconds"] for record in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nprocs", default="1,2", help="process counts to compare, comma-separated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--attention_epochs", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32, help="per process")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=OUTPUT / "processes")
    args = parser.parse_args()
    train, _ = _benchmark_split()
    datalist = write_datalist(args.out / "train.json", train, ("flair",))
    rows = {}
    for nproc in (int(n) for n in args.nprocs.split(",")):
        run = args.out / f"nproc{nproc}"
        wall = amecam("train", "--data_dir", datalist, "--output_dir", run, "--epochs", args.epochs,
                      "--attention_epochs", args.attention_epochs, "--image_size", args.image_size, "--batch_size", args.batch_size,
                      "--device", args.device, "--nproc_per_node", nproc, "--seed", 0, "--overwrite", log=args.out / "commands.log")
        stage1 = json.loads((run / "models" / "stage1.json").read_text(encoding="utf-8"))
        stage2 = json.loads((run / "models" / "stage2.json").read_text(encoding="utf-8"))
        rows[nproc] = {"wall_s": wall, "stage1_slices_per_s": _rate(stage1), "stage2_slices_per_s": _rate(stage2),
                       "stage1_train_loss": [record["train_loss"] for record in stage1["history"]],
                       "best_val_auc": stage1["best_val_auc"], "effective_batch": nproc * args.batch_size}
    summary = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "runs": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n{summary['machine']}\n")
    print("| processes | effective batch | stage 1 slices/s | stage 2 slices/s | whole command (s) | stage-1 train loss per epoch | validation AUC |")
    print("|---|---|---|---|---|---|---|")
    for nproc, row in rows.items():
        losses = " / ".join(f"{loss:.3f}" for loss in row["stage1_train_loss"])
        print(f"| {nproc} | {row['effective_batch']} | {row['stage1_slices_per_s']:.1f} | {row['stage2_slices_per_s']:.1f} | "
              f"{row['wall_s']:.0f} | {losses} | {row['best_val_auc']:.3f} |")


if __name__ == "__main__":
    main()
