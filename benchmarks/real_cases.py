"""Train on the synthetic cohort, test on real scans: the six BRATS 2013 cases and BraTS2021_00006.

    python benchmarks/real_cases.py --modality flair     # after benchmarks/synthetic.py --modality flair
    python benchmarks/real_cases.py --modality t1ce      # after benchmarks/synthetic.py --modality t1ce
    python benchmarks/real_cases.py --modality flair --supervised   # after benchmarks/segmentation.py too

No real case is used for training (there are too few for a split): the bundle trained by
``benchmarks/synthetic.py`` on synthetic phantoms is evaluated, with ``amecam evaluate``, on every
tumour slice of the real cases (BRATS 2013 through a datalist that names each file and the brain mask
the dataset ships; BraTS 2021 in its own layout). This measures transfer from phantom to patient, and
the training-free threshold and Otsu rows show what brightness alone gives on the same slices.
``--supervised`` adds the upper-bound row: the U-Net that ``benchmarks/segmentation.py`` trained on the
expert masks of the same synthetic training cases (so it, too, never saw a real scan).
Writes ``bench_output/real_<modality>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, SHARED_DATA, amecam, machine, table, write_datalist  # noqa: E402

FILES_2013 = {"flair": "Flair_subtrMeanDivStd.nii.gz", "t1ce": "T1c_subtrMeanDivStd.nii.gz"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", default="flair", choices=sorted(FILES_2013))
    parser.add_argument("--bundle", type=Path, default=None, help="default: bench_output/synthetic_<modality>/run")
    parser.add_argument("--methods", default="amecam,exit1,exit2,mean_exits,attention,cam,gradcam,hirescam,threshold,otsu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--supervised", action="store_true",
                        help="add the supervised U-Net of bench_output/synthetic_<modality>/segmentation as a row")
    args = parser.parse_args()

    from amecam_cli.cases import find_cases

    bundle = args.bundle or OUTPUT / f"synthetic_{args.modality}" / "run"
    if not (bundle / "models" / "model.pt").is_file():
        raise SystemExit(f"{bundle}: no trained bundle; run benchmarks/synthetic.py --modality {args.modality} first")
    extra = []
    if args.supervised:
        unet = OUTPUT / f"synthetic_{args.modality}" / "segmentation" / "unet_supervised"
        if not (unet / "models" / "model.ts").is_file():
            raise SystemExit(f"{unet}: no supervised U-Net; run benchmarks/segmentation.py --source {unet.parents[1]} first")
        extra = ["--extra_bundles", unet]
    out = args.out or OUTPUT / f"real_{args.modality}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    pattern = f"{args.modality}={{case}}/{FILES_2013[args.modality]};label={{case}}/OTMultiClass.nii.gz;brainmask={{case}}/brainmask.nii.gz"
    sources = {
        "brats2013": find_cases(SHARED_DATA / "brats2013", args.modality, pattern=pattern),
        "brats2021": find_cases(SHARED_DATA / "brats2021", args.modality),
    }
    summary = {"modality": args.modality, "bundle": str(bundle), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "commands": [f"python benchmarks/real_cases.py {' '.join(sys.argv[1:])}".strip()], "reports": {}}
    for name, cases in sources.items():
        datalist = write_datalist(out / f"{name}.json", cases, (args.modality,))
        report_dir = out / name
        seconds = amecam("evaluate", "--data_dir", datalist, "--bundle", bundle, "-o", report_dir, "--methods", args.methods,
                         *extra, "--device", "cpu", "--overwrite", log=log)
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        summary["reports"][name] = {"cases": [c.case_id for c in cases], "n_slices": report["n_slices"],
                                    "classifier_slice_auc": report.get("classifier_slice_auc"), "seconds": seconds,
                                    "table": table(report)}
        print(f"\n{name} ({args.modality}): {len(cases)} cases, {report['n_slices']} tumour slices")
        print(summary["reports"][name]["table"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
