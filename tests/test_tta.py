"""Flip test-time augmentation (``AMECAMNet(tta="flip")``, ``--augment flip``): what it computes and how each command takes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from amecam_cli.cli import main
from tests.conftest import planted_case, save_nifti

FLIPS = [(-1,), (-2,), (-2, -1)]


def _slices(n=3, size=64, seed=0):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, :6] = 0  # no brain along one edge, as preprocessing leaves it: the flips move it
    return x


@pytest.fixture(scope="module")
def network():
    from amecam_bundle.scripts.networks import AMECAMNet

    torch.manual_seed(0)
    return AMECAMNet(in_channels=1, stem_stride=1).eval()


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_flip_makes_every_map_the_mirror_of_the_mirrored_slices_map(network, fusion):
    network.fusion = fusion
    x = _slices()
    try:
        with torch.no_grad():
            plain = network.all_maps(x)
            network.set_tta("flip")
            maps = network.all_maps(x)
            for dims in FLIPS:
                mirrored = network.all_maps(x.flip(dims))
                for key in ("final", "attention", "exits"):
                    torch.testing.assert_close(mirrored[key].flip(dims), maps[key], atol=1e-5, rtol=0)
                torch.testing.assert_close(mirrored["logits"], maps["logits"], atol=1e-5, rtol=0)
                # without augmentation the network is not flip-equivariant: the test above can fail
                network.set_tta("none")
                assert (network.all_maps(x.flip(dims))["final"].flip(dims) - plain["final"]).abs().max() > 0.05
                network.set_tta("flip")
    finally:
        network.set_tta("none")
        network.fusion = "mean"
    # the augmented maps are the average of the four views' own maps, flipped back (the final map min-maxed again)
    views = [plain] + [{k: v.flip(d) if v.dim() == 4 else v for k, v in network.all_maps(x.flip(d)).items()} for d in FLIPS]
    torch.testing.assert_close(maps["attention"], torch.stack([v["attention"] for v in views]).mean(dim=0), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps["logits"], torch.stack([v["logits"] for v in views]).mean(dim=0), atol=1e-5, rtol=0)
    if fusion == "mean":  # the paper's final map is min-max normalised per slice, augmented or not
        assert maps["final"].amax() == pytest.approx(1.0, abs=1e-4)
    else:  # Mf alone: its average, as the attention row
        torch.testing.assert_close(maps["final"], maps["attention"])


def test_flip_gating_and_trace_give_the_forward_map(network):
    """Inference's one-pass gating (score, then maps_from_raw on the kept slices) and the TorchScript trace compute,
    with flips, what the forward pass does."""
    from amecam_bundle.scripts.inference import gated_output

    x = _slices(4, seed=1)
    network.set_tta("flip")
    try:
        with torch.no_grad():
            full = network(x)
            probability, *raw = network.score(x)
            assert all(m.shape[:2] == (4, 4) for m in raw)  # the four views as channels, so gating picks slices
            torch.testing.assert_close(probability, full[:, 1, 0, 0])
            kept = gated_output(network, x, probability_threshold=float(probability.median()))
            on = probability >= probability.median()
            torch.testing.assert_close(kept[on, 0], full[on, 0])
            assert kept[~on, 0].abs().max() == 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace_module(network, {"forward": x, "score": x, "maps_from_raw": (x, *raw)})
            y = _slices(2, seed=2)  # another batch size than the trace's
            torch.testing.assert_close(traced(y), network(y))
            network.set_tta("none")
            assert not torch.allclose(traced(y), network(y), atol=1e-3)  # the trace holds the augmentation
    finally:
        network.set_tta("none")
    with pytest.raises(ValueError, match="tta must be one of none, flip"):
        network.set_tta("rotate")


def test_the_toolkit_offers_the_bundles_choices():
    from amecam_bundle.scripts.networks import TTA_CHOICES
    from amecam_cli.bundle import TTA_CHOICES as offered

    assert offered == TTA_CHOICES


def test_infer_with_tta_flip_writes_the_augmented_mask(tmp_path, tiny_bundle, capsys):
    """--augment flip runs the eager network with flips (not the bundle's trace, which has none); the mask keeps the
    input's grid; the map is the augmented one."""
    from amecam_cli.bundle import open_bundle

    image, _ = planted_case(seed=3)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    cams = {}
    for tta in ("none", "flip"):
        out, cam = tmp_path / f"{tta}_mask.nii.gz", tmp_path / f"{tta}_cam.nii.gz"
        assert main(["infer", str(src), "-o", str(out), "--bundle", str(tiny_bundle), "--augment", tta, "--save_cam", str(cam),
                     "--device", "cpu"]) == 0
        assert nib.load(str(out)).shape == image.shape
        cams[tta] = nib.load(str(cam)).get_fdata()
    assert np.abs(cams["flip"] - cams["none"]).max() > 0.01
    assert open_bundle(tiny_bundle, device="cpu", torchscript=True).tta == "none"
    flipped = open_bundle(tiny_bundle, device="cpu", torchscript=True, tta="flip")
    assert flipped.tta == "flip" and flipped.network.tta == "flip"  # the eager network: a trace has no tta attribute
    assert main(["infer", str(src), "-o", str(tmp_path / "x.nii.gz"), "--bundle", str(tiny_bundle), "--augment", "rotate"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--augment must be one of none, flip, got 'rotate'")
    assert not (tmp_path / "x.nii.gz").exists()


def test_tta_is_refused_on_a_bundle_whose_code_predates_it(tmp_path, tiny_bundle, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old, ignore=shutil.ignore_patterns("slices", "checkpoints", "logs"))
    networks = old / "scripts" / "networks.py"
    code = networks.read_text(encoding="utf-8").replace("self.set_tta(tta)", "self.tta = tta").replace("def set_tta(", "def _gone(")
    networks.write_text(code, encoding="utf-8")  # as the code of 0.5.20 and before: no set_tta
    config = old / "configs" / "inference.yaml"
    config.write_text("\n".join(line for line in config.read_text(encoding="utf-8").splitlines() if "tta" not in line) + "\n",
                      encoding="utf-8")
    metadata = json.loads((old / "configs" / "metadata.json").read_text(encoding="utf-8"))
    del metadata["network_args"]["tta"]
    (old / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    image, _ = planted_case(seed=3)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    out = tmp_path / "mask.nii.gz"
    assert main(["infer", str(src), "-o", str(out), "--bundle", str(old), "--augment", "flip", "--device", "cpu"]) == 2
    assert "this bundle's code predates --augment (bundle 0.5.21)" in capsys.readouterr().err
    assert not out.exists()
    assert main(["infer", str(src), "-o", str(out), "--bundle", str(old), "--augment", "none", "--device", "cpu"]) == 0  # its own


def test_evaluate_with_tta_flip_records_it(tmp_path, tiny_bundle, capsys):
    data = tmp_path / "data"
    from tests.conftest import write_brats_case

    write_brats_case(data, "CASE_90", modalities=("flair",), seed=90)
    report = tmp_path / "report"
    assert main(["evaluate", "--data_dir", str(data), "--bundle", str(tiny_bundle), "-o", str(report), "--methods", "amecam",
                 "--augment", "flip", "--device", "cpu"]) == 0
    content = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert content["tta"] == "flip"
    assert "- Test-time augmentation: flip" in (report / "report.md").read_text(encoding="utf-8")
    plain = tmp_path / "plain"
    assert main(["evaluate", "--data_dir", str(data), "--bundle", str(tiny_bundle), "-o", str(plain), "--methods", "amecam",
                 "--device", "cpu"]) == 0
    unaugmented = json.loads((plain / "report.json").read_text(encoding="utf-8"))
    assert unaugmented["tta"] == "none"
    # the flips reach the scored maps, not only the report's record
    assert abs(content["methods"]["amecam"]["slice"]["dice"] - unaugmented["methods"]["amecam"]["slice"]["dice"]) > 0.01
    # --resume of the augmented report with other settings is refused, not mixed
    assert main(["evaluate", "--data_dir", str(data), "--bundle", str(tiny_bundle), "-o", str(report), "--methods", "amecam",
                 "--augment", "none", "--device", "cpu", "--resume"]) == 2
    assert 'other settings (tta "flip", now "none")' in capsys.readouterr().err


def test_monai_bundle_run_takes_augment(tmp_path, tiny_bundle):
    image, _ = planted_case(seed=4)
    src = save_nifti(tmp_path / "v_flair.nii.gz", image.astype(np.int16))
    cams = {}
    for tta in ("none", "flip"):
        cam = tmp_path / f"{tta}_cam.nii.gz"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tiny_bundle / "configs" / "inference.yaml"),
               "--bundle_root", str(tiny_bundle), "--image", str(src), "--output", str(tmp_path / f"{tta}.nii.gz"),
               "--cam_output", str(cam), "--device", "cpu", "--augment", tta]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        cams[tta] = nib.load(str(cam)).get_fdata()
    assert np.abs(cams["flip"] - cams["none"]).max() > 0.01


def test_a_bundle_whose_metadata_asks_for_flip_runs_it_not_its_unaugmented_trace(tmp_path, tiny_bundle):
    from amecam_cli.bundle import open_bundle, verify_bundle

    edited = tmp_path / "edited"
    shutil.copytree(tiny_bundle, edited, ignore=shutil.ignore_patterns("slices", "checkpoints", "logs"))
    metadata = json.loads((edited / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["network_args"]["tta"] = "flip"
    (edited / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    assert (edited / "models" / "model.ts").is_file()
    opened = open_bundle(edited, device="cpu", torchscript=True)
    assert opened.tta == "flip" and opened.network.tta == "flip"
    assert open_bundle(edited, device="cpu", torchscript=True, tta="none").network.tta == "none"
    # amecam verify checks the trace against the network it was traced from, and says the flips run eagerly
    rows = {name: (passed, detail) for name, passed, detail in verify_bundle(edited)}
    assert all(passed for passed, _ in rows.values()), rows
    assert "network_args.tta flip runs eagerly" in rows["TorchScript matches eager"][1]
