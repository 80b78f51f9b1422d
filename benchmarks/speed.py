"""CPU speed, measured side by side: the naive pipeline against amecam's, at equal epochs and on the same cases.

    python benchmarks/speed.py train      # training throughput and the Dice each pipeline reaches
    python benchmarks/speed.py rescore --runs bench_output/RUN ...   # every map of the networks train runs left
    python benchmarks/speed.py stage2 --source bench_output/RUN --attention_epochs 12 --out bench_output/NEW
                                          # stage 2 again, longer, on a train run's frozen classifier
    python benchmarks/speed.py infer      # amecam infer on one 240x240x155 volume vs a bare ResNet-18 pass (--crf: with DenseCRF;
                                          # --augment flip: with flip test-time augmentation)
    python benchmarks/speed.py boxes      # how wide the brain box (the crop) is on the phantoms
    python benchmarks/speed.py norms --stem_stride 1   # instance norm vs group norm, NCHW vs channels-last

``train`` trains AME-CAM twice on (up to) the 16 training cases of the synthetic benchmark cohort (seed 0) for
the same number of epochs and scores both on every tumour slice of the 6 test cases (threshold 0.5,
no CRF, the same code for both) -- the final map and, beside it, Mf, the mean of the exits, each exit and
Grad-CAM (``map_dice``; ``rescore`` does the same for the networks of earlier runs):

* naive: MONAI's default ResNet stem (7x7 stride 1 + max pool) and instance norm (``nn.InstanceNorm2d``),
  whole slices resized to 128 (no crop to the brain), every labelled slice every epoch, fp32 contiguous tensors;
* amecam: the shipped pipeline -- slices cropped to the brain, normal slices sampled in balance with
  tumour slices, channels-last tensors, ``FastInstanceNorm2d`` -- with the stem stride (``--stem_stride``, default 2, the fast
  variant) and the crop's side in pixels (``--image_size``, default 128) given on the command line.
  ``--stem_stride 1`` is the naive network's own stem (the default of ``amecam train``); with it the
  speed can only come from the rest, e.g. ``--image_size 96``: a crop of the brain at 96 pixels has
  about the pixel size of the naive whole slice at 128, since the brain box is about 3/4 of the slice wide (``boxes``).

``--pretrain_epochs N`` runs SimCLR pretraining of the encoder first (stage 0, as ``amecam train --pretrain
simclr`` does) and starts stage 1 from it; its time is in ``stage0_seconds`` and ``train_seconds``.

``stage2`` trains the attention network of a ``train`` run's amecam pipeline again, from the same
frozen classifier, slices and seed, for ``--attention_epochs`` epochs, and leaves a run folder that
``rescore`` and ``fusion.py --runs`` score like any other: how much a longer stage 2 changes the maps.

``infer`` times ``amecam infer`` end to end in a fresh process (start-up, reading, preprocessing,
network, writing) against a fresh process that only builds MONAI's ResNet-18 and runs it over the
same 155 slices at 128x128, and reports where amecam's time goes. ``--versus B1 B2 ...`` times more
bundles in the same repeats, in turn, so that they are compared under the same load.

``--device cuda`` (train, infer): train on the GPU (scoring stays on the CPU, so Dice is computed the same
way), or time ``amecam infer --device cuda`` against the bare ResNet-18 pass on the GPU.

``norms`` times the classifier alone (random weights, 136 slices of ``--image_size`` in passes of 8, the
predictor's CPU batch) with ``nn.InstanceNorm2d`` or ``FastInstanceNorm2d`` and NCHW or channels-last
weights, profiles the first variant, times the stem's max pool on both layouts, and times a training
step (forward and backward, batch 32, one thread) with either norm; variants in turn in every repeat.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, amecam, machine, split_by_case  # noqa: E402


def _with_norm(network, cls: type):
    """Give every instance norm of ``network`` the class ``cls`` (same attributes, only ``forward`` differs)."""
    import torch.nn as nn

    for module in network.modules():
        if isinstance(module, nn.InstanceNorm2d):
            module.__class__ = cls
    return network


def _naive_slices(cases, out: Path, size: int, seed: int) -> Path:
    """A slice dataset like ``amecam slice`` writes, but of whole slices (no crop to the brain)."""
    from amecam_bundle.scripts.preprocess import extract_slices, prepare_volume

    from amecam_cli.cases import load_case
    from amecam_cli.slicing import MANIFEST_FIELDS, label_slices, split_cases

    (out / "images").mkdir(parents=True, exist_ok=True)
    split = split_cases([c.case_id for c in cases], val_fraction=0.2, seed=seed)
    rows = []
    for case in cases:
        loaded = load_case(case)
        prepared = prepare_volume(loaded.channels)
        nx, ny = prepared.brain.shape[:2]
        side = max(nx, ny)
        box = ((nx - side) // 2, (nx - side) // 2 + side, (ny - side) // 2, (ny - side) // 2 + side)
        zs = prepared.brain_slices
        images = extract_slices(prepared.image, box, zs, size).numpy().astype(np.float16)
        np.save(out / "images" / f"{case.case_id}.npy", images)
        labels, fractions = label_slices(loaded.label, zs, min_tumor_fraction=0.01)
        for row, z in enumerate(zs):
            rows.append({"case": case.case_id, "slice": int(z), "z": int(z), "row": row, "label": labels[row],
                         "tumor_fraction": fractions[row], "brain_fraction": 0, "split": split[case.case_id], "file": case.case_id})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "dataset.json").write_text(json.dumps({"format": "amecam-slices", "settings": {"modalities": ["flair"], "image_size": size},
                                                  "split": split}), encoding="utf-8")
    return out


SCORED_MAPS = ("amecam", "attention", "mean_exits", "exit1", "exit2", "exit3", "exit4", "gradcam")


def _slice_dice(network, cases, size: int, crop: bool) -> tuple[dict[str, float], int, float]:
    """Pooled slice-level Dice of every map of ``SCORED_MAPS`` on every tumour slice; also slices/s of the final map.

    The throughput times only the final map (``all_maps``), in passes of 32; the other maps come from a
    second, untimed pass through ``amecam_cli.cams.compute_maps``, the code ``amecam evaluate`` uses.
    """
    import torch

    from amecam_bundle.scripts.preprocess import extract_slices, paste_slices, prepare_volume

    from amecam_cli.cams import compute_maps
    from amecam_cli.cases import load_case
    from amecam_cli.metrics import dice
    from amecam_cli.slicing import tumour_slice_indices

    scores: dict[str, list[float]] = {m: [] for m in SCORED_MAPS}
    seconds, n = 0.0, 0
    network.eval()
    for case in cases:
        loaded = load_case(case)
        prepared = prepare_volume(loaded.channels)
        nx, ny = prepared.brain.shape[:2]
        side = max(nx, ny)
        box = prepared.box if crop else ((nx - side) // 2, (nx - side) // 2 + side, (ny - side) // 2, (ny - side) // 2 + side)
        zs = tumour_slice_indices(loaded.label, prepared.brain_slices)
        x = extract_slices(prepared.image, box, zs, size)
        if crop:
            x = x.contiguous(memory_format=torch.channels_last)
        started = time.perf_counter()
        with torch.inference_mode():
            final = torch.cat([network.all_maps(x[i : i + 32])["final"][:, 0] for i in range(0, len(x), 32)])
        seconds += time.perf_counter() - started
        n += len(zs)
        maps = compute_maps(network, x, SCORED_MAPS, batch_size=32)
        if not torch.allclose(maps["amecam"], final, atol=1e-5):
            raise SystemExit(f"{case.case_id}: compute_maps and all_maps disagree on the final map")
        for method in SCORED_MAPS:
            full = paste_slices(maps[method].clamp(0, 1), box, (nx, ny)).numpy()
            for i, z in enumerate(zs):
                scores[method].append(dice((full[i] >= 0.5) & prepared.brain[:, :, z], loaded.label[:, :, z]))
    return {m: float(np.mean(v)) for m, v in scores.items()}, n, n / seconds


def _build(pipeline: dict):
    """The AME-CAM network of one pipeline of a ``train`` run, as ``train.json`` records it."""
    import torch.nn as nn

    from amecam_bundle.scripts.networks import AMECAMNet, FastInstanceNorm2d

    norm = {"InstanceNorm2d": nn.InstanceNorm2d, "FastInstanceNorm2d": FastInstanceNorm2d}[pipeline.get("norm", "InstanceNorm2d")]
    return _with_norm(AMECAMNet(1, stem_stride=pipeline["stem_stride"]), norm)


def _load_network(pipeline: dict, weights: Path):
    """The trained network of one pipeline of a ``train`` run, in eval mode; channels-last where the pipeline is."""
    import torch

    network = _build(pipeline)
    network.load_state_dict(torch.load(weights, map_location="cpu"))
    if pipeline["crop"]:  # the shipped pipeline's layout (values are the same either way)
        network = network.to(memory_format=torch.channels_last)
    return network.eval()


def _benchmark_split():
    """The (train, test) cases of the synthetic benchmark cohort (seed 0, 6 test cases), synthesised if missing."""
    from amecam_cli.cases import find_cases

    cohort = OUTPUT / "cohort_seed0_n22"
    amecam("synth", cohort, "--n_cases", 22, "--seed", 0)
    cases = find_cases(cohort, "flair")
    return split_by_case(cases, 6, 0)


def train_benchmark(args) -> dict:
    import torch
    import torch.nn as nn
    from monai.utils import set_determinism

    from amecam_bundle.scripts.networks import AMECAMNet, FastInstanceNorm2d, MultiExitResNet
    from amecam_bundle.scripts.train import AttentionTrainer, ClassifierTrainer, SimCLRTrainer

    from amecam_cli.slicing import SliceSettings, slice_dataset

    out = args.out / "train"
    train, test = _benchmark_split()
    train = train[: args.n_train]
    results = {"n_train_cases": len(train), "n_test_cases": len(test), "epochs": args.epochs, "attention_epochs": args.attention_epochs,
               "pretrain_epochs": args.pretrain_epochs, "train_seed": args.train_seed, "device": args.device}
    for name in args.pipelines.split(","):
        folder = out / name
        naive = name == "naive"
        size = 128 if naive else args.image_size
        crop = not naive and not args.no_crop
        if not crop:
            slices = folder / "slices" if (folder / "slices" / "manifest.csv").exists() else _naive_slices(train, folder / "slices", size, 0)
        else:
            slices = folder / "slices"
            slice_dataset(train, slices, SliceSettings(modalities=("flair",), image_size=size, seed=0), progress=False)
        network_kwargs = {"stem_stride": 1 if naive else args.stem_stride}
        norm = nn.InstanceNorm2d if naive else FastInstanceNorm2d  # naive: MONAI's own norm

        def build(cls: type, norm: type = norm, kwargs: dict = network_kwargs) -> nn.Module:
            return _with_norm(cls(1, **kwargs), norm)

        common = dict(dataset_dir=str(slices), output_dir=str(folder / "models"), batch_size=32, seed=args.train_seed, device=args.device,
                      progress=False, channels_last=not naive)
        t0, pretrained = 0.0, None
        if args.pretrain_epochs:  # stage 0 as `amecam train --pretrain simclr` runs it (batch and seed as stage 1)
            set_determinism(seed=args.train_seed)
            started = time.perf_counter()
            SimCLRTrainer(build(MultiExitResNet), epochs=args.pretrain_epochs, **common).run()
            t0, pretrained = time.perf_counter() - started, str(folder / "models" / "simclr_encoder.pt")
        set_determinism(seed=args.train_seed)  # the initial weights too, as the bundle's training configs do
        started = time.perf_counter()
        stage1 = ClassifierTrainer(build(MultiExitResNet), epochs=args.epochs, balance=not naive, pretrained=pretrained, **common).run()
        t1 = time.perf_counter() - started
        set_determinism(seed=args.train_seed)
        started = time.perf_counter()
        stage2 = AttentionTrainer(build(AMECAMNet), classifier_weights=str(folder / "models" / "classifier.pt"),
                                  epochs=args.attention_epochs, **common).run()
        t2 = time.perf_counter() - started
        network = build(AMECAMNet)
        network.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu"))  # scored on the CPU
        if not naive:
            network = network.to(memory_format=torch.channels_last)
        map_dice, n_slices, maps_per_s = _slice_dice(network, test, size, crop=crop)
        history = stage1["history"]
        results[name] = {
            "stage0_seconds": t0, "stage1_seconds": t1, "stage2_seconds": t2, "train_seconds": t0 + t1 + t2,
            "stage1_slices_per_epoch": int(np.mean([h["train_slices_per_s"] * h["seconds"] for h in history])),
            "stage1_slices_per_s": float(np.median([h["train_slices_per_s"] for h in history])),
            "stage2_slices_per_s": float(np.median([h["train_slices_per_s"] for h in stage2["history"]])),
            "slice_dice": map_dice["amecam"], "map_dice": map_dice, "n_test_slices": n_slices, "inference_slices_per_s": maps_per_s,
            "best_val_auc": stage1["best_val_auc"], "stem_stride": network_kwargs["stem_stride"], "image_size": size, "crop": crop,
            "norm": norm.__name__, "train_device": args.device, "scored_on": "cpu",
        }
        print(name, json.dumps(results[name], indent=1), flush=True)
    if "amecam" not in results or "naive" not in results:
        return results
    results["speedup"] = {
        "stage1_slices_per_s": results["amecam"]["stage1_slices_per_s"] / results["naive"]["stage1_slices_per_s"],
        "train_wall_time": results["naive"]["train_seconds"] / results["amecam"]["train_seconds"],
        "inference_slices_per_s": results["amecam"]["inference_slices_per_s"] / results["naive"]["inference_slices_per_s"],
    }
    return results


def stage2_benchmark(args) -> dict:
    """Stage 2 of ``--source``'s amecam pipeline again for ``--attention_epochs``, into the run folder ``--out``."""
    import shutil

    from monai.utils import set_determinism

    from amecam_bundle.scripts.train import AttentionTrainer

    if args.source is None or not (args.source / "train.json").is_file():
        raise SystemExit("stage2: --source takes the --out folder of a `speed.py train` run")
    try:
        recorded = json.loads((args.source / "train.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{args.source / 'train.json'}: cannot read ({exc})") from None
    if not isinstance(recorded, dict) or "amecam" not in recorded:
        raise SystemExit(f"{args.source}: this train run has no amecam pipeline")
    pipeline = recorded["amecam"]
    source, folder = args.source / "train" / "amecam", args.out / "train" / "amecam"
    for needed in (source / "models" / "classifier.pt", source / "slices" / "manifest.csv"):
        if not needed.is_file():
            raise SystemExit(f"{needed}: missing; --source must be a finished `speed.py train` run")
    if (folder / "models" / "model.pt").exists():
        raise SystemExit(f"{folder}: a stage-2 network is already there; choose another --out")
    (folder / "models").mkdir(parents=True, exist_ok=True)
    if not (folder / "slices").exists():
        (folder / "slices").symlink_to((source / "slices").resolve(), target_is_directory=True)
    shutil.copy2(source / "models" / "classifier.pt", folder / "models" / "classifier.pt")
    seed = recorded.get("train_seed", 0)
    set_determinism(seed=seed)
    started = time.perf_counter()
    stage2 = AttentionTrainer(_build(pipeline), classifier_weights=str(folder / "models" / "classifier.pt"), epochs=args.attention_epochs,
                              dataset_dir=str(folder / "slices"), output_dir=str(folder / "models"), batch_size=32, seed=seed,
                              device="cpu", progress=False, channels_last=pipeline["crop"]).run()
    seconds = time.perf_counter() - started
    _, test = _benchmark_split()
    network = _load_network(pipeline, folder / "models" / "model.pt")
    map_dice, n_slices, _ = _slice_dice(network, test, pipeline["image_size"], crop=pipeline["crop"])
    results = {**recorded, "attention_epochs": args.attention_epochs, "stage2_source": str(args.source),
               "amecam": {**pipeline, "stage2_seconds": seconds, "train_seconds": pipeline.get("stage0_seconds", 0.0) + pipeline["stage1_seconds"] + seconds, "slice_dice": map_dice["amecam"], "map_dice": map_dice,
                          "n_test_slices": n_slices, "stage2_best_epoch": stage2.get("best_epoch"),
                          "stage2_slices_per_s": float(np.median([h["train_slices_per_s"] for h in stage2["history"]]))}}
    results.pop("naive", None)
    results.pop("speedup", None)
    results["stage2_command"] = f"python benchmarks/speed.py {' '.join(sys.argv[1:])}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")  # what rescore and fusion.py read
    return results


def rescore_benchmark(args) -> dict:
    """Every map of the networks that earlier ``train`` runs left (``--runs``), on the same test slices.

    Per run and pipeline the pooled slice Dice of each map of ``SCORED_MAPS``; per pipeline kind
    (naive, or amecam with its size, crop and stem) the mean, minimum and maximum over the runs (seeds).
    A run's scores are kept beside its weights (``models/rescore.json``) and reused unless ``--fresh``.
    """
    if not args.runs:
        raise SystemExit("rescore: name the --out folders of earlier train runs with --runs")
    for run in args.runs:
        if not (run / "train.json").is_file():
            raise SystemExit(f"{run}: no train.json here; --runs takes the --out folders of `speed.py train` runs")
    _, test = _benchmark_split()
    runs, groups = {}, {}
    for run in args.runs:
        recorded = json.loads((run / "train.json").read_text(encoding="utf-8"))
        for name in ("naive", "amecam"):
            if name not in recorded:
                continue
            pipeline = recorded[name]
            weights = run / "train" / name / "models" / "model.pt"
            cache = weights.with_name("rescore.json")  # one run's scores, kept beside its weights
            cached = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() and not args.fresh else {}
            if set(cached.get("map_dice", {})) == set(SCORED_MAPS) and cached.get("weights_mtime") == weights.stat().st_mtime:
                map_dice, n_slices = cached["map_dice"], cached["n_test_slices"]
            else:
                network = _load_network(pipeline, weights)
                map_dice, n_slices, _ = _slice_dice(network, test, pipeline["image_size"], crop=pipeline["crop"])
                cache.write_text(json.dumps({"map_dice": map_dice, "n_test_slices": n_slices, "weights_mtime": weights.stat().st_mtime},
                                            indent=1) + "\n", encoding="utf-8")
            seed = recorded.get("train_seed", 0)
            kind = "naive" if name == "naive" else f"amecam, {pipeline['image_size']} px, {'crop' if pipeline['crop'] else 'no crop'}, stem {pipeline['stem_stride']}"
            runs[f"{run.name}/{name}"] = {"kind": kind, "train_seed": seed, "n_test_slices": n_slices, "map_dice": map_dice,
                                          "recorded_slice_dice": pipeline["slice_dice"]}
            groups.setdefault(kind, []).append(map_dice)
            print(run.name, name, json.dumps(map_dice), flush=True)
    summary = {
        kind: {"n_runs": len(dices), **{m: {"mean": float(np.mean([d[m] for d in dices])), "min": min(d[m] for d in dices),
                                             "max": max(d[m] for d in dices)} for m in SCORED_MAPS}}
        for kind, dices in groups.items()
    }
    return {"runs": runs, "summary": summary, "table": _rescore_table(runs)}


_MAP_NAMES = {"amecam": "AME-CAM final map", "attention": "Mf (attention)", "mean_exits": "mean of exits M1-M4",
              "exit1": "Exit 1", "exit2": "Exit 2", "exit3": "Exit 3", "exit4": "Exit 4", "gradcam": "Grad-CAM"}


def _rescore_table(runs: dict) -> str:
    """Markdown: a row per map, a column per run (its pipeline kind and seed); the best map of each run in bold."""
    names = list(runs)
    lines = ["| slice Dice | " + " | ".join(f"{runs[n]['kind']}, seed {runs[n]['train_seed']}" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for method in SCORED_MAPS:
        cells = []
        for n in names:
            dice_by_map = runs[n]["map_dice"]
            value = f"{dice_by_map[method]:.3f}"
            cells.append(f"**{value}**" if dice_by_map[method] == max(dice_by_map.values()) else value)
        lines.append(f"| {_MAP_NAMES[method]} | " + " | ".join(cells) + " |")
    above = ["yes" if all(runs[n]["map_dice"]["amecam"] > runs[n]["map_dice"][f"exit{k}"] for k in range(1, 5)) else "no" for n in names]
    lines.append("| final map above every exit? | " + " | ".join(above) + " |")
    return "\n".join(lines)


_BARE = """
import sys, torch
from monai.networks.nets import resnet18
device = torch.device(sys.argv[1])
net = resnet18(spatial_dims=2, n_input_channels=1, num_classes=1).eval().to(device)
x = torch.rand(155, 1, 128, 128)
with torch.inference_mode():
    for i in range(0, 155, 64):
        net(x[i:i + 64].to(device)).cpu()
"""


def _timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stderr


def _infer_once(bundle: Path, volume: Path, out: Path, device: str, crf: bool = False, augment: str | None = None) -> tuple[float, dict]:
    executable = str(Path(sys.executable).with_name("amecam"))
    seconds, log = _timed([executable, "infer", str(volume), "-o", str(out / "mask.nii.gz"), "--bundle", str(bundle),
                           "--device", device, "--overwrite", *(["--crf"] if crf else []), *(["--augment", augment] if augment else [])])
    match = re.search(r"timings: (\{.*\})", log)
    return seconds, json.loads(match.group(1)) if match else {}


def _infer_summary(runs: list[float], breakdowns: list[dict], bare: list[float]) -> dict:
    breakdown = {k: statistics.median(b[k] for b in breakdowns) for k in breakdowns[0]} if breakdowns else {}
    median = statistics.median(runs)
    return {
        "amecam_infer_seconds": median, "bare_resnet18_seconds": statistics.median(bare),
        "ratio": median / statistics.median(bare), "runs": {"amecam": runs, "bare": bare},
        "amecam_breakdown_seconds": breakdown,
        "start_up_seconds": median - sum(breakdown.values()) if breakdown else None,
    }


def infer_benchmark(args) -> dict:
    """``--bundle`` (and each ``--versus`` bundle) through ``amecam infer``, then a bare ResNet-18, in turn.

    One repeat runs every bundle once and the bare pass once, so bundles compared in one call share
    the machine's state (load on a shared host moves timings by tens of per cent within minutes).
    """
    from amecam_cli.cases import find_cases

    bundles = [args.bundle, *args.versus]
    for bundle in bundles:
        if not (bundle / "models" / "model.pt").is_file():
            raise SystemExit(f"{bundle}: no trained bundle; run benchmarks/synthetic.py --modality flair first (or pass --bundle)")
    if args.volume is not None:
        if not args.volume.exists():
            raise SystemExit(f"{args.volume}: no such volume")
        volume = args.volume
    else:
        volume = find_cases(OUTPUT / "cohort_seed0_n22", "flair")[-1].images["flair"]
    out = args.out / "infer"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[float]] = {i: [] for i in range(len(bundles))}
    breakdowns: dict[int, list[dict]] = {i: [] for i in range(len(bundles))}
    bare: list[float] = []
    for _ in range(args.repeats):
        for i, bundle in enumerate(bundles):
            seconds, breakdown = _infer_once(bundle, volume, out, args.device, args.crf, args.augment if i == 0 else None)
            runs[i].append(seconds)
            if breakdown:
                breakdowns[i].append(breakdown)
        bare.append(_timed([sys.executable, "-c", _BARE, args.device])[0])
    result = {"volume": str(volume), "bundle": str(args.bundle), "device": args.device, "crf": args.crf, "augment": args.augment,
              **_infer_summary(runs[0], breakdowns[0], bare)}
    if args.versus:
        result["versus"] = {str(bundle): _infer_summary(runs[i], breakdowns[i], bare) for i, bundle in enumerate(bundles) if i}
    return result


def boxes_benchmark(args) -> dict:
    """Side of each phantom's brain box (the crop) in pixels of the 240-pixel slice."""
    from amecam_bundle.scripts.preprocess import prepare_volume

    from amecam_cli.cases import find_cases, load_case

    cohort = OUTPUT / "cohort_seed0_n22"
    amecam("synth", cohort, "--n_cases", 22, "--seed", 0)
    sides = {}
    for case in find_cases(cohort, "flair"):
        prepared = prepare_volume(load_case(case).channels)
        (x0, x1, y0, y1), nx = prepared.box, prepared.brain.shape[0]
        sides[case.case_id] = max(x1 - x0, y1 - y0)
    values = sorted(sides.values())
    return {"slice_side": nx, "brain_box_side": sides, "min": values[0], "median": float(np.median(values)), "max": values[-1]}


def _timed_rounds(variants: dict, repeats: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": t} for name, t in times.items()}


def norms_benchmark(args) -> dict:
    import copy

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from amecam_bundle.scripts.networks import FastInstanceNorm2d, MultiExitResNet

    size, channels_last = args.image_size, torch.channels_last
    torch.manual_seed(0)
    base = MultiExitResNet(1, stem_stride=args.stem_stride).eval()
    networks = {
        "instance_norm, NCHW weights": _with_norm(copy.deepcopy(base), nn.InstanceNorm2d),
        "group_norm, NCHW weights": _with_norm(copy.deepcopy(base), FastInstanceNorm2d),
        "instance_norm, channels-last weights": _with_norm(copy.deepcopy(base), nn.InstanceNorm2d).to(memory_format=channels_last),
        "group_norm, channels-last weights": _with_norm(copy.deepcopy(base), FastInstanceNorm2d).to(memory_format=channels_last),
    }
    x = torch.rand(136, 1, size, size)

    def forward(network: nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([network(x[i : i + 8].contiguous(memory_format=channels_last))[0] for i in range(0, len(x), 8)])

    reference = forward(networks["instance_norm, NCHW weights"])
    difference = {name: float((forward(net) - reference).abs().max()) for name, net in networks.items()}
    results = {"slices": len(x), "image_size": size, "stem_stride": args.stem_stride, "threads": torch.get_num_threads(),
               "forward_seconds": _timed_rounds({name: (lambda net=net: forward(net)) for name, net in networks.items()}, args.repeats),
               "max_logit_difference": difference}
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        forward(networks["instance_norm, NCHW weights"])
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    results["profile_instance_norm_nchw_share"] = {e.key: e.self_cpu_time_total / total for e in events[:5]}
    activation = torch.rand(8, 64, size, size)
    layouts = {"NCHW": activation, "channels-last": activation.contiguous(memory_format=channels_last)}
    with torch.inference_mode():
        pools = {name: (lambda a=a: [F.max_pool2d(a, 3, 2, 1) for _ in range(10)]) for name, a in layouts.items()}
        results["max_pool_8x64_seconds_per_call"] = {name: r["median"] / 10 for name, r in _timed_rounds(pools, args.repeats).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch, target = torch.rand(32, 1, size, size).contiguous(memory_format=channels_last), torch.rand(32, 4)

    def step(network: nn.Module) -> None:
        logits, _ = network(batch)
        F.binary_cross_entropy_with_logits(logits, target).backward()

    trainable = {name: _with_norm(copy.deepcopy(base), cls).train().to(memory_format=channels_last)
                 for name, cls in (("instance_norm", nn.InstanceNorm2d), ("group_norm", FastInstanceNorm2d))}
    results["train_step_seconds_batch32_1_thread"] = _timed_rounds({name: (lambda net=net: step(net)) for name, net in trainable.items()},
                                                                   args.repeats)
    torch.set_num_threads(threads)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("train", "stage2", "rescore", "infer", "boxes", "norms"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n_train", type=int, default=16, help="training cases (of the 16); fewer keeps the naive run short")
    parser.add_argument("--attention_epochs", type=int, default=3)
    parser.add_argument("--pretrain_epochs", type=int, default=0,
                        help="train: SimCLR epochs before stage 1 (stage 0 of `amecam train --pretrain simclr`; 0 = none)")
    parser.add_argument("--stem_stride", type=int, choices=(1, 2), default=2, help="train: the amecam pipeline's stem stride")
    parser.add_argument("--image_size", type=int, default=128, help="train: the amecam pipeline's slice side (the naive one stays 128)")
    parser.add_argument("--no_crop", action="store_true",
                        help="train: the amecam pipeline on whole slices like the naive one (an ablation of the crop)")
    parser.add_argument("--pipelines", default="amecam,naive", choices=("amecam,naive", "amecam", "naive"),
                        help="train: which pipelines to run (the speed-up needs both)")
    parser.add_argument("--train_seed", type=int, default=0,
                        help="train: seed of the initial weights, data order and augmentation (cohort, split and slices stay seed 0)")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="rescore: the --out folders of earlier train runs")
    parser.add_argument("--source", type=Path, help="stage2: the --out folder of the train run whose classifier is reused")
    parser.add_argument("--fresh", action="store_true", help="rescore: score again even where a run's scores are kept")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--versus", type=Path, nargs="*", default=[],
                        help="infer: more bundles, timed in turn with --bundle in every repeat")
    parser.add_argument("--bundle", type=Path, default=OUTPUT / "synthetic_flair" / "run")
    parser.add_argument("--volume", type=Path, help="infer: the volume to segment (default: the benchmark cohort's SYN_021, "
                        "240x240x155); the bare pass stays 155 slices at 128x128")
    parser.add_argument("--crf", action="store_true", help="infer: run amecam infer with --crf (DenseCRF on the candidate's box)")
    parser.add_argument("--augment", choices=("none", "flip"), help="infer: amecam infer --augment for --bundle (not for --versus, "
                        "which run as their bundles say: --bundle COPY --augment flip --versus RUN times the augmentation "
                        "against the plain run in one call)")
    parser.add_argument("--out", type=Path, default=OUTPUT / "speed")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="train, infer: where to train or run amecam infer and the bare pass (train scores on the CPU either way)")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    for name, least in (("epochs", 1), ("attention_epochs", 1), ("n_train", 1), ("pretrain_epochs", 0)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    results = {"train": train_benchmark, "stage2": stage2_benchmark, "rescore": rescore_benchmark, "infer": infer_benchmark, "boxes": boxes_benchmark, "norms": norms_benchmark}[args.part](args)
    results["machine"] = machine()
    results["command"] = f"python benchmarks/speed.py {' '.join(sys.argv[1:])}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.part}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    if "table" in results:
        print(results["table"])


if __name__ == "__main__":
    main()
