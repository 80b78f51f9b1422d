"""amecam infer (amecam_cli/inference.py) and the bundle's VolumePredictor."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from amecam_cli.errors import AmecamError
from amecam_cli.inference import run_inference

from .conftest import planted_case, save_nifti


def _volume(tmp_path, name="patient_flair.nii.gz", affine=None):
    image, _ = planted_case(seed=11)
    affine = affine if affine is not None else np.array([[0, 1.2, 0, -5], [-0.9, 0, 0, 30], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    return save_nifti(tmp_path / name, image.astype(np.int16), affine)


def test_train_then_infer_keeps_the_input_geometry(tmp_path, tiny_bundle):
    src = _volume(tmp_path)  # an oblique, permuted affine: the mask must come back on this grid
    results = run_inference(src, tmp_path / "out" / "mask.nii.gz", tiny_bundle, save_cam=tmp_path / "out" / "cam.nii.gz",
                            device="cpu", progress=False)
    mask = nib.load(str(tmp_path / "out" / "mask.nii.gz"))
    cam = nib.load(str(tmp_path / "out" / "cam.nii.gz"))
    reference = nib.load(str(src))
    assert mask.shape == reference.shape and cam.shape == reference.shape
    np.testing.assert_allclose(mask.affine, reference.affine)
    assert mask.get_data_dtype() == np.uint8 and cam.get_data_dtype() == np.float32
    values = np.asanyarray(mask.dataobj)
    assert set(np.unique(values)) <= {0, 1}
    cam_values = np.asanyarray(cam.dataobj)
    assert cam_values.min() >= 0 and cam_values.max() <= 1
    assert results[0]["tumour_slices"] == int(values.any(axis=(0, 1)).sum())
    assert set(results[0]["seconds"]) >= {"read", "preprocess", "network", "postprocess", "write"}


def test_an_output_folder_gets_one_file_per_result(tmp_path, tiny_bundle):
    """-o FOLDER (existing, or a new name ending in a slash) for one volume, as cp does; the map likewise."""
    src = _volume(tmp_path)
    (tmp_path / "masks").mkdir()
    run_inference(src, tmp_path / "masks", tiny_bundle, save_cam=f"{tmp_path}/maps/", device="cpu", progress=False)
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["patient_flair_mask.nii.gz"]
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["patient_flair_cam.nii.gz"]
    run_inference(src, f"{tmp_path}/new/", tiny_bundle, device="cpu", progress=False)
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["patient_flair_mask.nii.gz"]
    with pytest.raises(AmecamError, match="output already exists"):
        run_inference(src, tmp_path / "masks", tiny_bundle, device="cpu", progress=False)


def test_mha_in_mha_out(tmp_path, tiny_bundle):
    image, _ = planted_case(seed=3)
    itk = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    itk.SetSpacing((0.9, 0.9, 3.0))
    itk.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(itk, str(tmp_path / "scan.mha"))
    run_inference(tmp_path / "scan.mha", tmp_path / "scan_mask.mha", tiny_bundle, device="cpu", progress=False)
    out = sitk.ReadImage(str(tmp_path / "scan_mask.mha"))
    assert out.GetSize() == itk.GetSize() and out.GetSpacing() == pytest.approx(itk.GetSpacing())
    assert out.GetOrigin() == pytest.approx(itk.GetOrigin()) and out.GetPixelID() == sitk.sitkUInt8


def test_a_dataset_folder_gives_one_mask_per_case(tmp_path, tiny_bundle, tiny_dataset):
    results = run_inference(tiny_dataset, tmp_path / "masks", tiny_bundle, device="cpu", progress=False)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"CASE_{i:02d}_mask.nii.gz" for i in range(6)]
    assert len(results) == 6


def test_resume_segments_only_what_an_interrupted_run_left(tmp_path, tiny_bundle, tiny_dataset):
    masks, maps = tmp_path / "masks", tmp_path / "maps"
    run_inference(tiny_dataset, masks, tiny_bundle, save_cam=maps, device="cpu", progress=False)
    (masks / "CASE_01_mask.nii.gz").unlink()  # as if the run had stopped before these
    (masks / "CASE_04_mask.nii.gz").unlink()
    (maps / "CASE_04_cam.nii.gz").unlink()
    (maps / "CASE_05_cam.nii.gz").unlink()  # stopped between a mask and its map
    stamps = {p.name: p.stat().st_mtime_ns for p in (*masks.iterdir(), *maps.iterdir())}
    with pytest.raises(AmecamError, match="--resume keeps the outputs that exist and --overwrite replaces them"):
        run_inference(tiny_dataset, masks, tiny_bundle, save_cam=maps, device="cpu", progress=False, resume=True, overwrite=True)
    results = run_inference(tiny_dataset, masks, tiny_bundle, save_cam=maps, device="cpu", progress=False, resume=True)
    assert [(r["case"], r["kept"]) for r in results] == [("CASE_01", ["cam"]), ("CASE_04", []), ("CASE_05", ["mask"])]
    assert sorted(p.name for p in masks.iterdir()) == [f"CASE_{i:02d}_mask.nii.gz" for i in range(6)]
    assert sorted(p.name for p in maps.iterdir()) == [f"CASE_{i:02d}_cam.nii.gz" for i in range(6)]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in (*masks.iterdir(), *maps.iterdir()) if p.name in stamps)
    assert run_inference(tiny_dataset, masks, tiny_bundle, save_cam=maps, device="cpu", progress=False, resume=True) == []


def test_rerunning_on_a_folder_with_masks_says_resume_or_overwrite(tmp_path, tiny_bundle, tiny_dataset):
    """Many cases, some outputs already there: the error counts them and names both ways on, before any work."""
    masks = tmp_path / "masks"
    run_inference(tiny_dataset, masks, tiny_bundle, device="cpu", progress=False)
    (masks / "CASE_03_mask.nii.gz").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in masks.iterdir()}
    with pytest.raises(AmecamError) as info:
        run_inference(tiny_dataset, masks, tiny_bundle, device="cpu", progress=False)
    message = str(info.value)
    assert "CASE_00_mask.nii.gz: output already exists" in message and "5 of the 6 outputs exist" in message
    assert "--resume segments only the rest" in message and "--overwrite replaces them" in message
    assert {p.name: p.stat().st_mtime_ns for p in masks.iterdir()} == stamps
    for name in ("CASE_00", "CASE_01", "CASE_02", "CASE_04"):
        (masks / f"{name}_mask.nii.gz").unlink()
    with pytest.raises(AmecamError, match=r"CASE_05_mask.nii.gz: output already exists \(1 of the 6 outputs exists\)"):
        run_inference(tiny_dataset, masks, tiny_bundle, device="cpu", progress=False)


def test_one_unreadable_volume_of_many_costs_the_others_nothing(tmp_path, tiny_bundle, tiny_dataset, caplog):
    """The cases after a corrupt one are still segmented; the error names it, and --resume does only it once fixed."""
    flair = tiny_dataset / "CASE_02" / "CASE_02_flair.nii.gz"
    good = flair.read_bytes()
    flair.write_bytes(b"not a volume")
    masks = tmp_path / "masks"
    with pytest.raises(AmecamError, match=r"1 of 6 volume\(s\) could not be segmented \(CASE_02;.*other 5 mask\(s\) were written.*--resume"):
        run_inference(tiny_dataset, masks, tiny_bundle, device="cpu", progress=False)
    assert sorted(p.name for p in masks.iterdir()) == [f"CASE_{i:02d}_mask.nii.gz" for i in (0, 1, 3, 4, 5)]
    assert any("CASE_02" in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    flair.write_bytes(good)
    results = run_inference(tiny_dataset, masks, tiny_bundle, device="cpu", progress=False, resume=True)
    assert [r["case"] for r in results] == ["CASE_02"]
    with pytest.raises(AmecamError, match="cannot read"):  # a single volume: its own error, nothing else
        flair.write_bytes(b"not a volume")
        run_inference(flair, tmp_path / "one.nii.gz", tiny_bundle, device="cpu", progress=False)


def test_a_dicom_series_into_a_folder_gets_series_folders(tmp_path, tiny_bundle):
    """-o FOLDER for a DICOM series: <case>_mask is a series folder inside it, as a file input gets <case>_mask.nii.gz."""
    from amecam_cli.io import read_volume

    from .test_io import _dicom_series

    image, _ = planted_case(seed=11)
    _dicom_series(tmp_path / "patient_flair", image)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "notes.txt").write_text("keep", encoding="utf-8")
    run_inference(tmp_path / "patient_flair", tmp_path / "masks", tiny_bundle, save_cam=f"{tmp_path}/maps/", device="cpu", progress=False)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["notes.txt", "patient_flair_mask"]
    mask, props = read_volume(tmp_path / "masks" / "patient_flair_mask")
    _, source = read_volume(tmp_path / "patient_flair")
    assert props.format == "dicom" and mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(props.affine, source.affine, atol=1e-4)
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["patient_flair_cam"]


def test_a_datalist_of_dicom_series_gets_series_folders(tmp_path, tiny_bundle):
    """Many DICOM cases into a folder: series folders, as for one series (NIfTI only where -o names it)."""
    import json

    from amecam_cli.io import read_volume

    from .test_io import _dicom_series

    for i, name in enumerate(("a", "b")):
        _dicom_series(tmp_path / f"{name}_series", planted_case(seed=20 + i)[0])
    (tmp_path / "list.json").write_text(json.dumps({"testing": [{"case": n, "flair": f"{n}_series"} for n in ("a", "b")]}), encoding="utf-8")
    run_inference(tmp_path / "list.json", tmp_path / "masks", tiny_bundle, save_cam=f"{tmp_path}/maps/", device="cpu", progress=False)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a_mask", "b_mask"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a_cam", "b_cam"]
    mask, props = read_volume(tmp_path / "masks" / "b_mask")
    assert props.format == "dicom" and mask.shape == planted_case()[0].shape


def test_a_case_folder_takes_a_mask_file_and_a_map_folder(tmp_path, tiny_bundle, tiny_dataset):
    case = tiny_dataset / "CASE_01"
    run_inference(case, tmp_path / "m.nrrd", tiny_bundle, save_cam=f"{tmp_path}/maps/", device="cpu", progress=False)
    assert (tmp_path / "m.nrrd").is_file() and [p.name for p in (tmp_path / "maps").iterdir()] == ["CASE_01_cam.nii.gz"]
    (tmp_path / "notes").write_text("keep", encoding="utf-8")
    with pytest.raises(AmecamError, match="notes: a file whose name is no volume format; -o must end in one of .*or name a folder"):
        run_inference(case, tmp_path / "notes", tiny_bundle, device="cpu", progress=False)
    with pytest.raises(AmecamError, match="notes: .* holds 6 cases, so -o must be a folder, not a file"):
        run_inference(tiny_dataset, tmp_path / "notes", tiny_bundle, device="cpu", progress=False)
    assert (tmp_path / "notes").read_text(encoding="utf-8") == "keep"


def test_crf_and_threshold_change_the_mask(tmp_path, tiny_bundle):
    src = _volume(tmp_path)
    run_inference(src, tmp_path / "low.nii.gz", tiny_bundle, threshold=0.2, device="cpu", progress=False)
    run_inference(src, tmp_path / "high.nii.gz", tiny_bundle, threshold=0.8, device="cpu", progress=False)
    low = np.asanyarray(nib.load(str(tmp_path / "low.nii.gz")).dataobj)
    high = np.asanyarray(nib.load(str(tmp_path / "high.nii.gz")).dataobj)
    assert high.sum() <= low.sum() and not (high & ~low).any()  # a higher threshold only removes voxels
    run_inference(src, tmp_path / "crf.nii.gz", tiny_bundle, crf=True, threshold=0.2, device="cpu", progress=False)
    crf = np.asanyarray(nib.load(str(tmp_path / "crf.nii.gz")).dataobj)
    assert crf.dtype == np.uint8 and set(np.unique(crf)) <= {0, 1}
    assert not (crf & ~(low.any(axis=(0, 1), keepdims=True))).any()  # CRF only on slices with a candidate


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        ("missing", {}, "no such file or folder"),
        ("corrupt", {}, "cannot read NIfTI volume"),
        ("flat", {}, "volume is 2-D"),
        ("t1name", {}, "looks like a t1 volume (by its name) but the bundle was trained on flair"),
        ("plain", {"modality": "t1"}, "the bundle was trained on flair; it cannot segment t1 images"),
        ("exists", {}, "output already exists (pass --overwrite"),
        ("plain", {"threshold": 1.5}, "--threshold must be in [0, 1]"),
        ("plain", {"save_cam": "map_without_suffix"}, "map_without_suffix: output must end in one of"),  # the mask was written first
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, tiny_bundle, setup, kwargs, message):
    src = tmp_path / "patient_flair.nii.gz"
    if setup in ("plain", "corrupt", "exists", "t1name"):
        _volume(tmp_path)
    if setup == "corrupt":
        src.write_bytes(src.read_bytes()[:400])
    if setup == "flat":
        save_nifti(src, np.zeros((20, 20), np.int16))
    if setup == "t1name":
        src = src.rename(tmp_path / "patient_t1.nii.gz")
    out = tmp_path / "results" / "mask.nii.gz"  # a folder still to be made: a failed run must not leave it behind
    if setup == "exists":
        out.parent.mkdir()
        out.write_bytes(b"keep me")
    with pytest.raises(AmecamError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        run_inference(src, out, tiny_bundle, device="cpu", progress=False, **kwargs)
    if setup == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.parent.exists()


def test_t1_named_file_is_accepted_when_the_user_insists(tmp_path, tiny_bundle):
    src = _volume(tmp_path, name="scan_t1.nii.gz")
    run_inference(src, tmp_path / "m.nii.gz", tiny_bundle, modality="flair", device="cpu", progress=False)
    assert (tmp_path / "m.nii.gz").exists()


def test_bundle_without_weights(tmp_path, tiny_bundle):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    (broken / "models" / "model.pt").unlink()
    with pytest.raises(AmecamError, match="bundle has no weights \\(models/model.pt\\).*train it with amecam train \\("):
        run_inference(_volume(tmp_path), tmp_path / "m.nii.gz", broken, device="cpu")
    stage1 = (broken / "configs" / "train_stage1.yaml").read_bytes()
    (broken / "configs" / "train_stage1.yaml").unlink()  # a train-seg bundle has no stage 1: told its own command
    with pytest.raises(AmecamError, match="train it with amecam train-seg"):
        run_inference(_volume(tmp_path), tmp_path / "m.nii.gz", broken, device="cpu")
    (broken / "configs" / "train_stage1.yaml").write_bytes(stage1)
    (broken / "models" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AmecamError, match="models/model.pt: not a readable PyTorch state dict, truncated or corrupt"):
        run_inference(_volume(tmp_path), tmp_path / "m.nii.gz", broken, device="cpu")


def test_weights_of_another_network_say_which_tensors_disagree(tmp_path, tiny_bundle):
    """torch's own message ("Error(s) in loading state_dict for AMECAMNet:") names nothing on its first line."""
    import shutil

    import torch

    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    (broken / "models" / "model.ts").unlink()
    weights = broken / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    first = next(key for key in state if key.endswith("weight") and state[key].dim() == 4)
    shape = tuple(state[first].shape)
    state[first] = torch.zeros(shape[0], shape[1] + 1, *shape[2:])  # a network with one more modality
    del state[next(reversed(state))]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, weights)
    expected = (f"models/model.pt: these weights belong to another network than the bundle's configs (1 tensor(s) "
                f"of another shape, e.g. {first}: {[shape[0], shape[1] + 1, *shape[2:]]} in the file, "
                f"{list(shape)} in the network; 1 missing")
    with pytest.raises(AmecamError, match=re.escape(expected)):
        run_inference(_volume(tmp_path), tmp_path / "m.nii.gz", broken, device="cpu", progress=False)
    with pytest.raises(ValueError, match="1 unexpected, e.g. extra.weight"):  # python -m monai.bundle run
        VolumePredictor(AMECAMNet(in_channels=1), image_size=64, device="cpu").load(weights)
    torch.save([1, 2], weights)  # loads with weights_only, but is no state dict
    with pytest.raises(AmecamError, match="models/model.pt: holds a list, not a state dict of tensors"):
        run_inference(_volume(tmp_path), tmp_path / "m.nii.gz", broken, device="cpu", progress=False)


def test_traced_bundle_gives_the_eager_masks(tiny_bundle):
    import torch

    from amecam_cli.bundle import open_bundle

    image, _ = planted_case(seed=11)
    channels = image[None].astype(np.float32)
    traced, eager = open_bundle(tiny_bundle, device="cpu", torchscript=True), open_bundle(tiny_bundle, device="cpu")
    assert isinstance(traced.network, torch.jit.ScriptModule) and not isinstance(eager.network, torch.jit.ScriptModule)
    probability = eager.predictor(gate=False).predict_canonical(channels).slice_probability
    scored = probability[probability > 0]
    threshold = float(np.median(scored))  # gating keeps some slices and empties others
    assert 0 < int((scored >= threshold).sum()) < len(scored)
    for all_maps in (False, True):
        a = eager.predictor(probability_threshold=threshold).predict_canonical(channels, all_maps=all_maps)
        b = traced.predictor(probability_threshold=threshold).predict_canonical(channels, all_maps=all_maps)
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-5)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.slice_probability, b.slice_probability, atol=1e-6)


def test_infer_on_a_cpu_never_imports_monai(tmp_path, tiny_bundle):
    import subprocess
    import sys

    src, out = _volume(tmp_path), tmp_path / "mask.nii.gz"
    code = ("import sys; from amecam_cli.inference import run_inference; "
            f"run_inference({str(src)!r}, {str(out)!r}, {str(tiny_bundle)!r}, device='cpu', progress=False); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'monai'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.is_file()
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_trace_older_than_the_weights_is_not_used(tmp_path, tiny_bundle):
    import os
    import shutil

    import torch

    from amecam_cli.bundle import open_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    weights = copy / "models" / "model.pt"
    later = (copy / "models" / "model.ts").stat().st_mtime + 60
    os.utime(weights, (later, later))  # as if the weights were replaced after training traced them
    assert not isinstance(open_bundle(copy, device="cpu", torchscript=True).network, torch.jit.ScriptModule)


def test_a_corrupt_trace_falls_back_to_the_eager_network_with_a_whole_sentence(tmp_path, tiny_bundle, caplog):
    import shutil

    import torch

    from amecam_cli.bundle import open_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    trace = copy / "models" / "model.ts"
    trace.write_bytes(trace.read_bytes()[:5000])  # a copy cut short
    with caplog.at_level("WARNING"):
        network = open_bundle(copy, device="cpu", torchscript=True).network
    assert not isinstance(network, torch.jit.ScriptModule)
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # torch's message runs to 300 characters on one line; it was cut mid-word at 160
    assert warning.startswith(f"{trace}: cannot load (PytorchStreamReader failed reading zip archive")
    assert warning.endswith(".); using the eager network"), warning


# The last commit of bundle 0.5.0 (amecam 0.5.0): a bundle carries its own scripts, so the CLI of a later
# release must still run what an earlier release trained.
BUNDLE_0_5_0 = "0ec3fea"


def _files_at(commit: str, folder: str, dest):
    """Write ``folder`` of the repository as it was at ``commit`` into ``dest`` (skip without history)."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    try:
        names = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", commit, folder],
                               check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history of this repository (commit {commit})")
    for name in names:
        target = dest / Path(name).relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{name}"],
                                          check=True, capture_output=True).stdout)


def test_a_bundle_of_an_earlier_release_still_runs(tmp_path, tiny_bundle, caplog):
    """0.5.1's CLI read Prediction.brain_slices, which 0.5.0 bundles do not have, and crashed on them."""
    import logging
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old, ignore=shutil.ignore_patterns("slices", "checkpoints", "scripts"))
    _files_at(BUNDLE_0_5_0, "bundle/scripts", old / "scripts")  # 0.5.1 changed the scripts only (and the version)
    assert "brain_slices: np.ndarray" not in (old / "scripts" / "inference.py").read_text(encoding="utf-8")  # no Prediction field
    src = _volume(tmp_path)
    new = run_inference(src, tmp_path / "new.nii.gz", tiny_bundle, device="cpu", progress=False)
    with caplog.at_level(logging.WARNING):
        earlier = run_inference(src, tmp_path / "old.nii.gz", old, device="cpu", progress=False)
        blank = run_inference(save_nifti(tmp_path / "blank_flair.nii.gz", np.zeros((24, 24, 12), np.int16)),
                              tmp_path / "blank.nii.gz", old, device="cpu", progress=False)
    assert earlier[0]["brain_slices"] == new[0]["brain_slices"] > 0
    np.testing.assert_array_equal(nib.load(str(tmp_path / "old.nii.gz")).get_fdata(), nib.load(str(tmp_path / "new.nii.gz")).get_fdata())
    assert blank[0]["brain_slices"] == 0 and "no slice has enough brain" in caplog.text


def test_masks_written_into_the_data_folder_are_not_cases_the_next_time(tmp_path, tiny_bundle):
    """-o DATA/ with --pattern "flair={case}.nii.gz": anna_mask.nii.gz matches the pattern, but it is anna's mask."""
    data = tmp_path / "patients"
    for name, seed in (("anna", 1), ("ben", 2)):
        image, _ = planted_case(seed=seed)
        save_nifti(data / f"{name}.nii.gz", image.astype(np.int16))
    first = run_inference(data, f"{data}/", tiny_bundle, pattern="flair={case}.nii.gz", device="cpu", progress=False)
    assert [r["case"] for r in first] == ["anna", "ben"]
    assert run_inference(data, f"{data}/", tiny_bundle, pattern="flair={case}.nii.gz", device="cpu", progress=False, resume=True) == []
    again = run_inference(data, f"{data}/", tiny_bundle, pattern="flair={case}.nii.gz", device="cpu", progress=False, overwrite=True)
    assert [r["case"] for r in again] == ["anna", "ben"]
    assert sorted(p.name for p in data.iterdir()) == ["anna.nii.gz", "anna_mask.nii.gz", "ben.nii.gz", "ben_mask.nii.gz"]
