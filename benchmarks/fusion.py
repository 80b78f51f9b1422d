"""How the final AME-CAM map is fused from the exits and Mf: the shipped rule against the alternatives.

    python benchmarks/fusion.py --runs bench_output/train_full_96_seed0 ...          # speed.py train runs
    python benchmarks/fusion.py --bundles bench_output/lgg_s2_strip/run=bench_output/lgg_s2_strip/test.json

No training: every map comes from a network an earlier run left. Per network, the pooled slice Dice
(threshold 0.5) of each fusion rule on two sets of tumour slices:

* ``val``: the tumour slices of the run's own validation cases (part of its training data, never
  trained on), on the slice grid the network sees;
* ``test``: every tumour slice of the held-out cases, on each volume's own grid, as ``amecam evaluate``
  scores them.

Rules (each map oriented so that 1 = tumour and min-max normalised inside the brain):

* ``paper``: ``minmax(mean(M1..M4, Mf))`` of the per-image normalised maps -- the shipped map;
* ``raw``: the same mean of the maps *before* per-image normalisation (the oriented, upsampled 1x1-conv
  outputs, and Mf as the attention-weighted sum of those), normalised once at the end, as the
  official AME-CAM code fuses them;
* ``attention`` (Mf alone), ``mean_exits`` and each exit, for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUTPUT, machine  # noqa: E402

RULES = ("paper", "raw", "attention", "mean_exits", "exit1", "exit2", "exit3", "exit4")


def fused_maps(network, x):
    """Every rule's ``(B, H, W)`` map for slices ``x`` of an ``AMECAMNet``."""
    import torch
    import torch.nn.functional as F

    from amecam_bundle.scripts.networks import brain_region, minmax_per_image

    brain = brain_region(x)
    with torch.no_grad():
        _, raw = network.classifier(x)
        polarity = network.classifier.exit_polarity.view(1, -1, 1, 1)
        oriented = torch.cat([F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False) for m in raw], dim=1) * polarity
        exits = minmax_per_image(oriented, brain)
        grey = network.grey(x)
        mf = network.aggregator.oriented(grey, exits)
        weights = network.aggregator.weights(grey, exits)
        mf_raw = (weights * oriented).sum(dim=1, keepdim=True) * network.aggregator.polarity
        maps = {
            "paper": minmax_per_image(torch.cat([exits, mf], dim=1).mean(dim=1, keepdim=True), brain),
            "raw": minmax_per_image(torch.cat([oriented, mf_raw], dim=1).mean(dim=1, keepdim=True), brain),
            "attention": mf,
            "mean_exits": minmax_per_image(exits.mean(dim=1, keepdim=True), brain),
            **{f"exit{k + 1}": exits[:, k : k + 1] for k in range(4)},
        }
        shipped = network.all_maps(x)["final"]
    if not torch.allclose(maps["paper"], shipped, atol=1e-5):
        raise SystemExit("fusion.py's paper rule disagrees with the network's own final map")
    return {k: v[:, 0] for k, v in maps.items()}


def _batched(network, x, batch: int = 32) -> dict:
    import torch

    parts = [fused_maps(network, x[i : i + batch]) for i in range(0, len(x), batch)]
    return {rule: torch.cat([p[rule] for p in parts]) for rule in RULES}


def score_val(network, slices: Path) -> tuple[dict, int]:
    """Pooled Dice of every rule on the validation tumour slices of a slice dataset (its own grid)."""
    from amecam_bundle.scripts.data import SliceSet

    from amecam_cli.metrics import dice

    val = SliceSet(slices, "val", labels=("tumor",))
    if len(val) == 0:
        return {}, 0
    indices = list(range(len(val)))
    x, _ = val.batch(indices)
    masks = val.targets("masks", indices).numpy() > 0.5
    maps = _batched(network, x)
    return {rule: float(np.mean([dice(maps[rule][i].numpy() >= 0.5, masks[i]) for i in indices])) for rule in RULES}, len(indices)


def score_test(network, cases, image_size: int, *, strip_skull: bool = False) -> tuple[dict, int]:
    """Pooled Dice of every rule on every tumour slice of ``cases``, on each volume's grid."""
    from amecam_bundle.scripts.preprocess import extract_slices, paste_slices, prepare_volume

    from amecam_cli.cases import load_case
    from amecam_cli.metrics import dice
    from amecam_cli.slicing import tumour_slice_indices

    scores: dict[str, list[float]] = {rule: [] for rule in RULES}
    for case in cases:
        loaded = load_case(case)
        prepared = prepare_volume(loaded.channels, brain=loaded.brain, strip_skull=strip_skull)
        shape = loaded.label.shape
        zs = list(prepared.brain_slices)
        tumour = tumour_slice_indices(loaded.label, range(shape[2]))
        maps = _batched(network, extract_slices(prepared.image, prepared.box, zs, image_size)) if zs else {}
        for rule in RULES:
            volume = np.zeros(shape, dtype=np.float32)
            if zs:
                volume[:, :, zs] = np.moveaxis(paste_slices(maps[rule].clamp(0, 1), prepared.box, shape[:2]).numpy(), 0, -1)
            mask = (volume >= 0.5) & prepared.brain
            scores[rule] += [dice(mask[:, :, z], loaded.label[:, :, z]) for z in tumour]
    n = len(scores[RULES[0]])
    return {rule: float(np.mean(v)) for rule, v in scores.items()}, n


def _speed_run(run: Path):
    """Network, slice dataset, test cases and image size of a ``speed.py train`` run (its amecam pipeline)."""
    from speed import _benchmark_split, _load_network

    recorded = json.loads((run / "train.json").read_text(encoding="utf-8"))
    if "amecam" not in recorded:
        raise SystemExit(f"{run}: this train run has no amecam pipeline")
    pipeline = recorded["amecam"]
    if not pipeline["crop"]:
        raise SystemExit(f"{run}: a run without the crop to the brain is not supported here")
    network = _load_network(pipeline, run / "train" / "amecam" / "models" / "model.pt")
    _, test = _benchmark_split()
    label = f"{run.name} (seed {recorded.get('train_seed', 0)}, {pipeline['image_size']} px, stem {pipeline['stem_stride']})"
    return label, network, run / "train" / "amecam" / "slices", test, pipeline["image_size"], False


def _bundle_run(spec: str):
    """``RUN=TEST_JSON``: an ``amecam train`` bundle and the datalist of its held-out cases."""
    from amecam_cli.bundle import open_bundle
    from amecam_cli.cases import find_cases

    run, _, data = spec.partition("=")
    if not data:
        raise SystemExit(f"--bundles takes RUN=TEST_JSON, got {spec!r}")
    bundle = open_bundle(run, device="cpu")
    cases = find_cases(Path(data), bundle.modalities, require_label=True)
    label = f"{Path(run).parent.name}/{Path(run).name}"
    return label, bundle.network.eval(), Path(run) / "slices", cases, bundle.image_size, bundle.strip_skull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="--out folders of speed.py train runs")
    parser.add_argument("--bundles", nargs="*", default=[], help="RUN=TEST_JSON: amecam train bundles and their test datalists")
    parser.add_argument("--out", type=Path, default=OUTPUT / "fusion")
    args = parser.parse_args()
    if not args.runs and not args.bundles:
        raise SystemExit("fusion.py: name --runs (speed.py train runs) or --bundles (RUN=TEST_JSON)")
    for run in args.runs:
        if not (run / "train.json").is_file():
            raise SystemExit(f"{run}: no train.json here; --runs takes the --out folders of `speed.py train` runs")

    import torch

    torch.set_grad_enabled(False)
    results = {}
    for source in [*(_speed_run(r) for r in args.runs), *(_bundle_run(b) for b in args.bundles)]:
        label, network, slices, cases, size, strip = source
        val, n_val = score_val(network, slices)
        test, n_test = score_test(network, cases, size, strip_skull=strip)
        results[label] = {"val": val, "n_val": n_val, "test": test, "n_test": n_test}
        print(label, json.dumps(results[label]), flush=True)
    lines = ["| slice Dice, val / test | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for rule in RULES:
        cells = [f"{r['val'].get(rule, float('nan')):.3f} / {r['test'][rule]:.3f}" for r in results.values()]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines.append("| tumour slices, val / test | " + " | ".join(f"{r['n_val']} / {r['n_test']}" for r in results.values()) + " |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/fusion.py " + " ".join(sys.argv[1:])
    (args.out / "fusion.json").write_text(json.dumps({"command": command, "machine": machine(), "results": results, "table": table},
                                                     indent=1) + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
