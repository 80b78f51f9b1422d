"""DenseCRF around the candidate vs on whole slices, and CAM export time of AME-CAM vs Grad-CAM.

    python benchmarks/crf_and_cam.py --bundle bench_output/synthetic_flair/run --data bench_output/synthetic_flair/test.json

For every test case: ``amecam cam --method amecam`` (the map on every brain slice, no gating), then
``amecam crf`` twice -- restricted to the box around the candidate (the default) and with
``--full_slices`` -- timing the CRF step each reports, and the slice-level Dice (every tumour slice) of
the plain thresholded map and of both CRF masks. Then ``amecam cam`` with ``--method gradcam`` on the
same volume, to compare the map time of AME-CAM (no backward pass) with Grad-CAM's.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, machine  # noqa: E402


def _run(args: list[str]) -> str:
    executable = str(Path(sys.executable).with_name("amecam"))
    print("$ amecam " + " ".join(args), flush=True)
    proc = subprocess.run([executable, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=OUTPUT / "synthetic_flair" / "run")
    parser.add_argument("--data", type=Path, default=OUTPUT / "synthetic_flair" / "test.json")
    parser.add_argument("--out", type=Path, default=OUTPUT / "crf_and_cam")
    args = parser.parse_args()

    from amecam_cli.cases import find_cases
    from amecam_cli.io import read_volume
    from amecam_cli.metrics import dice

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in find_cases(args.data, "flair"):
        image = case.images["flair"]
        cam_path = args.out / f"{case.case_id}_amecam.nii.gz"
        log = _run(["cam", str(image), "-o", str(cam_path), "--bundle", str(args.bundle), "--method", "amecam", "--device", "cpu", "--overwrite"])
        amecam_s = float(re.search(r"slices, ([\d.]+) s\)", log).group(1))
        log = _run(["cam", str(image), "-o", str(args.out / f"{case.case_id}_gradcam.nii.gz"), "--bundle", str(args.bundle),
                    "--method", "gradcam", "--device", "cpu", "--overwrite"])
        gradcam_s = float(re.search(r"slices, ([\d.]+) s\)", log).group(1))
        n_slices = int(re.search(r"\((\d+) slices", log).group(1))
        timings = {}
        for name, extra in (("box", []), ("full", ["--full_slices"])):
            log = _run(["crf", str(image), str(cam_path), "-o", str(args.out / f"{case.case_id}_crf_{name}.nii.gz"), "--overwrite", *extra])
            timings[name] = float(re.search(r"DenseCRF on \d+ slices in ([\d.]+) s", log).group(1))
        label_file = read_volume(case.label)[0] > 0  # the written files are on the label's own voxel grid
        heat = read_volume(cam_path)[0]
        masks = {"threshold": heat >= 0.5, "box": read_volume(args.out / f"{case.case_id}_crf_box.nii.gz")[0] > 0,
                 "full": read_volume(args.out / f"{case.case_id}_crf_full.nii.gz")[0] > 0}
        axis = 2  # synthetic and BraTS files are axial along their third axis
        area = label_file.shape[0] * label_file.shape[1]
        tumour = [z for z in range(label_file.shape[axis]) if label_file[:, :, z].sum() > 0.01 * area]
        scores = {k: float(np.mean([dice(m[:, :, z], label_file[:, :, z]) for z in tumour])) for k, m in masks.items()}
        rows.append({"case": case.case_id, "slices": n_slices, "tumour_slices": len(tumour), "amecam_map_s": amecam_s,
                     "gradcam_map_s": gradcam_s, "crf_box_s": timings["box"], "crf_full_s": timings["full"], "dice": scores})
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "cases": rows,
        "mean": {
            "amecam_map_s": float(np.mean([r["amecam_map_s"] for r in rows])), "gradcam_map_s": float(np.mean([r["gradcam_map_s"] for r in rows])),
            "crf_box_s": float(np.mean([r["crf_box_s"] for r in rows])), "crf_full_s": float(np.mean([r["crf_full_s"] for r in rows])),
            "dice_threshold": float(np.mean([r["dice"]["threshold"] for r in rows])), "dice_crf_box": float(np.mean([r["dice"]["box"] for r in rows])),
            "dice_crf_full": float(np.mean([r["dice"]["full"] for r in rows])),
        },
        "machine": machine(), "command": "python benchmarks/crf_and_cam.py " + " ".join(sys.argv[1:]),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary["mean"], indent=2))


if __name__ == "__main__":
    main()
