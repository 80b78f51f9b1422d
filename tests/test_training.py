"""amecam_cli/training.py: a whole training run leaves a complete, self-contained bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from amecam_cli.errors import AmecamError
from amecam_cli.training import TrainSettings, resolve_settings, train_bundle

from .conftest import TINY_SETTINGS, write_brats_case


def test_trained_bundle_is_complete(tiny_bundle):
    for name in ("configs/metadata.json", "configs/inference.yaml", "configs/evaluate.yaml", "configs/train_stage1.yaml", "configs/train_stage2.yaml",
                 "configs/logging.conf", "scripts/networks.py", "docs/README.md", "LICENSE", "models/model.pt",
                 "models/model.ts", "models/classifier.pt", "models/stage1.json", "models/stage2.json", "logs/train.log",
                 "slices/manifest.csv"):
        assert (tiny_bundle / name).is_file(), name
    metadata = json.loads((tiny_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    training = metadata["amecam_training"]
    assert training["settings"]["image_size"] == 64 and training["settings"]["modalities"] == ["flair"]
    assert sorted(training["split"]) == [f"CASE_{i:02d}" for i in range(6)]
    assert set(training["split"].values()) == {"train", "val"}
    assert training["stage2"]["polarity"] in (1.0, -1.0)
    assert metadata["network_args"] == {"stem_stride": 1, "fusion": "mean", "tta": "none"}  # the defaults: full-resolution maps, the paper's fusion
    assert metadata["preprocessing"] == {"skull_strip": False}
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [64, 64] and image["channel_def"] == {"0": "flair"}
    stage1 = json.loads((tiny_bundle / "models" / "stage1.json").read_text(encoding="utf-8"))
    assert len(stage1["history"]) == 2 and 1 <= stage1["best_epoch"] <= 2
    assert 0.0 <= stage1["best_val_auc"] <= 1.0 and metadata["eval_metrics"]["val_slice_auc"] == stage1["best_val_auc"]
    card = (tiny_bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert "## This copy" in card and f"validation slice AUC {stage1['best_val_auc']:.3f}" in card
    assert "- Slice labels: from whole-tumour masks (tumour when it covers more than 1% of the slice)." in card
    log = (tiny_bundle / "logs" / "train.log").read_text(encoding="utf-8")
    assert " val slices, 2 epochs, batch 4," in log and " val tumour slices, 1 epoch, device cpu" in log  # not "1 epochs"


def test_a_single_case_trains_without_a_validation_auc_and_says_so(tmp_path, caplog):
    """One case cannot be split: the last epoch is kept, and the bundle must not claim an AUC of -1."""
    import logging

    write_brats_case(tmp_path / "data", "ONLY", seed=3)
    with caplog.at_level(logging.WARNING):
        train_bundle(tmp_path / "data", tmp_path / "run", settings={**TINY_SETTINGS, "epochs": 2}, progress=False)
    assert "no validation AUC (the validation split has 0 tumour and 0 normal slices" in caplog.text
    stage1 = json.loads((tmp_path / "run" / "models" / "stage1.json").read_text(encoding="utf-8"))
    assert stage1["best_val_auc"] is None and stage1["best_epoch"] == 2 and stage1["n_val"] == 0
    metadata = json.loads((tmp_path / "run" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["eval_metrics"]["val_slice_auc"] is None
    card = (tmp_path / "run" / "docs" / "README.md").read_text(encoding="utf-8")
    assert "no validation slice AUC: the validation split lacked tumour or normal slices" in card and "AUC -1" not in card


def test_same_seed_same_weights(tiny_bundle, tmp_path):
    # the seed must also fix the initial weights, which the configs build before any trainer runs
    train_bundle(tiny_bundle.parent / "data", tmp_path / "again", settings=dict(TINY_SETTINGS), progress=False)
    first = torch.load(tiny_bundle / "models" / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "models" / "model.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_csv_with_the_masks_labels_trains_the_same_network(tiny_bundle, tmp_path):
    """Slice labels from a CSV (no masks) are the same method: the CSV that states the masks' labels gives the same weights."""
    import shutil

    import nibabel as nib
    import numpy as np

    lines = ["case,slice,label"]
    for folder in sorted((tiny_bundle.parent / "data").iterdir()):
        seg = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
        share = (seg > 0).mean(axis=(0, 1))  # the masks' rule: tumour above 1% of the slice, normal without tumour
        lines += [f"{folder.name},{z},{'tumor' if share[z] > 0.01 else 'normal'}" for z in range(seg.shape[2])
                  if share[z] > 0.01 or share[z] == 0]
        (tmp_path / "volumes" / folder.name).mkdir(parents=True)
        shutil.copy(folder / f"{folder.name}_flair.nii.gz", tmp_path / "volumes" / folder.name)
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train_bundle(tmp_path / "volumes", tmp_path / "run", settings={**TINY_SETTINGS, "slice_labels": str(tmp_path / "labels.csv")},
                 progress=False)
    from_masks = torch.load(tiny_bundle / "models" / "model.pt", weights_only=True)
    from_csv = torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)
    assert from_masks.keys() == from_csv.keys()
    assert all(torch.equal(from_masks[name], from_csv[name]) for name in from_masks)


def test_resume_continues_after_the_last_checkpoint(tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        write_brats_case(data, f"C{i}", seed=i)
    run = tmp_path / "run"
    train_bundle(data, run, settings=dict(TINY_SETTINGS), progress=False)
    before = json.loads((run / "models" / "stage1.json").read_text(encoding="utf-8"))["history"]
    # roll the run back to "interrupted after stage-1 epoch 1": keep that checkpoint, drop everything later
    checkpoint = run / "models" / "checkpoints" / "stage1.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["epoch"], state["history"] = 0, state["history"][:1]
    state["best"] = {"auc": state["history"][0]["val_auc"][-1], "loss": state["history"][0]["val_loss"], "epoch": 1}
    torch.save(state, checkpoint)
    for name in ("stage1.json", "stage2.json", "model.pt", "model.ts"):
        (run / "models" / name).unlink()
    (run / "models" / "checkpoints" / "stage2.pt").unlink()
    train_bundle(None, run, resume=True, progress=False)  # the run finds its own data (amecam train -o RUN --resume)
    after = json.loads((run / "models" / "stage1.json").read_text(encoding="utf-8"))["history"]
    assert len(after) == 2
    assert after[0] == before[0]  # epoch 1 was not trained again
    assert "resuming after epoch 1" in (run / "logs" / "train.log").read_text(encoding="utf-8")
    assert (run / "models" / "model.pt").is_file()
    with pytest.raises(AmecamError, match="--image_size 96 differs from the run being resumed"):
        train_bundle(data, run, settings={"image_size": 96}, resume=True, progress=False)
    # other data is refused by the slices, and the run keeps the data it was started on
    other = tmp_path / "other"
    for i in range(4):
        write_brats_case(other, f"D{i}", seed=10 + i)
    with pytest.raises(AmecamError, match="holds slices of another set of cases"):
        train_bundle(other, run, resume=True, progress=False)
    assert json.loads((run / "configs" / "amecam_train.json").read_text(encoding="utf-8"))["data_dir"] == str(data.resolve())
    # a run saved before the data was recorded needs DATA_DIR again, and a new run always does
    saved = json.loads((run / "configs" / "amecam_train.json").read_text(encoding="utf-8"))
    del saved["data_dir"]
    (run / "configs" / "amecam_train.json").write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(AmecamError, match="did not record its data; give DATA_DIR with --resume"):
        train_bundle(None, run, resume=True, progress=False)
    saved["data_dir"] = str(tmp_path / "moved")  # data moved since: named, with the way on
    (run / "configs" / "amecam_train.json").write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(AmecamError, match="the data this run was started on is not there any more; give DATA_DIR"):
        train_bundle(None, run, resume=True, progress=False)
    with pytest.raises(AmecamError, match="train needs DATA_DIR"):
        train_bundle(None, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_refuses_to_train_into_a_used_folder_or_resume_nothing(tmp_path, tiny_dataset):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(AmecamError, match="not empty; pass --resume .* or --overwrite"):
        train_bundle(tiny_dataset, tmp_path / "run", settings=dict(TINY_SETTINGS))
    assert (tmp_path / "run" / "notes.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(AmecamError, match="nothing to resume"):
        train_bundle(tiny_dataset, tmp_path / "other", resume=True)
    # a bad setting is refused before the run folder is touched, so the retry needs no --overwrite
    with pytest.raises(AmecamError, match="--stem_stride must be"):
        train_bundle(tiny_dataset, tmp_path / "typo", settings={**TINY_SETTINGS, "stem_stride": 3})
    assert not (tmp_path / "typo").exists()
    # --overwrite clears the run folder's slices/, models/...: never when the data lives in there
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "project" / "slices")
    with pytest.raises(AmecamError, match="this input lies inside .*project, which --overwrite would clear"):
        train_bundle(tmp_path / "project" / "slices", tmp_path / "project", settings=dict(TINY_SETTINGS), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "project" / "slices").iterdir()) == sorted(p.name for p in tiny_dataset.iterdir())


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"seed": -1}, "--seed must be >= 0, got -1"),  # numpy's "expected non-negative integer" after slicing
        ({"learning_rate": -1.0}, "--learning_rate must be a number > 0, got -1.0"),  # torch's, after slicing
        ({"learning_rate": float("nan")}, "--learning_rate must be a number > 0, got nan"),
        ({"attention_learning_rate": 0}, "--attention_learning_rate must be a number > 0, got 0"),
        ({"pretrain": "simclr", "pretrain_epochs": 0}, "--pretrain_epochs must be >= 1 with --pretrain simclr"),
        ({"val_fraction": 1.0}, "--val_fraction must be in [0, 1), got 1.0"),
        ({"ambiguous": "maybe"}, "--ambiguous must be one of"),
        ({"nproc_per_node": 0}, "--nproc_per_node must be a whole number >= 1 (training processes, one per GPU), got 0"),
        ({"nproc_per_node": True}, "--nproc_per_node must be a whole number"),
    ],
)
def test_bad_settings_are_refused_before_the_run_folder_is_made(tmp_path, tiny_dataset, given, message):
    with pytest.raises(AmecamError, match=re.escape(message)):
        train_bundle(tiny_dataset, tmp_path / "run", settings={**TINY_SETTINGS, **given}, progress=False)
    assert not (tmp_path / "run").exists()


def test_settings_merge_defaults_file_and_command_line(tmp_path, caplog):
    config = tmp_path / "settings.yaml"
    config.write_text("epochs: 7\nimage_size: 64\nmodalities: flair,t1ce\n", encoding="utf-8")
    with caplog.at_level("INFO"):
        settings = resolve_settings(config=config, image_size=96, seed=None)
    assert settings.epochs == 7 and settings.image_size == 96 and settings.modalities == ("flair", "t1ce")
    assert settings.attention_epochs == TrainSettings().attention_epochs
    assert "setting image_size = 96 (command line)" in caplog.text and f"setting epochs = 7 ({config})" in caplog.text
    # a slice-label CSV named in the settings file is found beside the file, one on the command line from here
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "settings.yaml").write_text("slice_labels: labels.csv\n", encoding="utf-8")
    assert resolve_settings(config=tmp_path / "project" / "settings.yaml").slice_labels == str((tmp_path / "project" / "labels.csv").resolve())
    assert resolve_settings(slice_labels="labels.csv").slice_labels == str(Path("labels.csv").resolve())
    config.write_text("epoch: 7\n", encoding="utf-8")
    with pytest.raises(AmecamError, match="unknown settings epoch"):
        resolve_settings(config=config)
    config.write_text("epochs: 7\nmodalities: [flair\n", encoding="utf-8")  # YAML's message spans four lines
    with pytest.raises(AmecamError, match=re.escape(f"{config}: cannot read settings (expected ',' or ']', but got '<stream end>' "
                                                    "at line 3, column 1)")) as error:
        resolve_settings(config=config)
    assert "\n" not in str(error.value)
    with pytest.raises(AmecamError, match="--pretrain must be one of none, simclr, got 'byol'"):
        resolve_settings(pretrain="byol")
    with pytest.raises(AmecamError, match="--device must be one of auto, cpu, cuda"):
        resolve_settings(device="tpu")
    with pytest.raises(AmecamError, match="--stem_stride must be 1 .* or 2 .*, got 4"):
        resolve_settings(stem_stride=4)
    # a run saved before the option existed was trained with the stride-2 stem, and resumes with it
    assert resolve_settings(saved=TrainSettings().as_dict() | {"stem_stride": 1}).stem_stride == 1
    old_run = {k: v for k, v in TrainSettings().as_dict().items() if k != "stem_stride"}
    assert resolve_settings(saved=old_run).stem_stride == 2


def test_simclr_pretraining_feeds_stage_1(tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        write_brats_case(data, f"C{i}", seed=i)
    run = tmp_path / "run"
    train_bundle(data, run, settings={**TINY_SETTINGS, "pretrain": "simclr", "pretrain_epochs": 1, "epochs": 1}, progress=False)
    assert (run / "models" / "simclr_encoder.pt").is_file()
    assert "encoder initialised from" in (run / "logs" / "train.log").read_text(encoding="utf-8")
    assert json.loads((run / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]["pretrain"] == "simclr"


def test_nproc_per_node_trains_every_stage_with_torchrun(tmp_path, caplog):
    """--nproc_per_node 2 runs stages 0, 1 and 2 each in two torchrun processes (CPU processes here, as GPUs
    would be): their log reaches the run's train.log, and the bundle is complete."""
    data = tmp_path / "data"
    for i in range(4):
        write_brats_case(data, f"C{i}", seed=i)
    run = tmp_path / "run"
    settings = {**TINY_SETTINGS, "epochs": 1, "pretrain": "simclr", "pretrain_epochs": 1, "nproc_per_node": 2}
    with caplog.at_level("WARNING"):
        result = train_bundle(data, run, settings=settings, progress=False)
    assert "the processes share its cores" in caplog.text
    assert {name: summary["processes"] for name, summary in result["summaries"].items()} == {"stage0": 2, "stage1": 2, "stage2": 2}
    log = (run / "logs" / "train.log").read_text(encoding="utf-8")
    for stage in ("stage 0 (SimCLR)", "stage 1", "stage 2"):
        assert re.search(rf"amecam.train INFO: {re.escape(stage)}: .*, 2 processes \(batch 4 each\)", log), stage
    assert "encoder initialised from" in log
    assert (run / "models" / "model.ts").is_file()
    assert json.loads((run / "configs" / "amecam_train.json").read_text(encoding="utf-8"))["nproc_per_node"] == 2


def test_amecam_train_under_torchrun_is_refused(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: each process would write the same bundle
    with pytest.raises(AmecamError, match="run it once, with --nproc_per_node N, not under torchrun"):
        train_bundle(tiny_dataset, tmp_path / "run", settings=dict(TINY_SETTINGS), progress=False)
    assert not (tmp_path / "run").exists()


def test_multi_channel_training_with_the_fast_stem(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    settings = {**TINY_SETTINGS, "modalities": "flair,t1ce", "epochs": 1, "stem_stride": 2}
    train_bundle(tiny_dataset, run, settings=settings, progress=False)
    metadata = json.loads((run / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert metadata["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "flair", "1": "t1ce"}
    assert metadata["network_args"] == {"stem_stride": 2, "fusion": "mean", "tta": "none"}
    # the trained bundle rebuilds the same architecture from its own configs: M1 at a quarter of the input size
    from amecam_cli.bundle import instantiate_network

    network = instantiate_network(run)
    network.load_state_dict(torch.load(run / "models" / "model.pt", weights_only=True))
    assert network.classifier.stem[0].stride == (2, 2)
    features = network.classifier.stem(torch.rand(1, 2, 64, 64))
    assert features.shape[-1] == 16
    # `python -m monai.bundle run` with one image for a two-modality bundle: a message that names the
    # files it needs, in order, before any work (not a convolution's channel mismatch)
    from monai.bundle import run as bundle_run

    flair = tiny_dataset / "CASE_00" / "CASE_00_flair.nii.gz"
    t1ce = tiny_dataset / "CASE_00" / "CASE_00_t1ce.nii.gz"
    common = {"config_file": str(run / "configs" / "inference.yaml"), "bundle_root": str(run), "device": "cpu"}
    with pytest.raises(Exception) as failure:
        bundle_run(**common, image=str(flair), output=str(tmp_path / "one.nii.gz"))
    chain, error = [], failure.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("2 image(s), one per modality in this order: flair, t1ce (--image \"['patient_flair.nii.gz', 'patient_t1ce.nii.gz']\")" in text for text in chain), chain
    assert not (tmp_path / "one.nii.gz").exists()
    bundle_run(**common, image=[str(flair), str(t1ce)], output=str(tmp_path / "two.nii.gz"))
    assert (tmp_path / "two.nii.gz").is_file()
    card = (run / "docs" / "README.md").read_text(encoding="utf-8")
    assert "--image \"['patient_flair.nii.gz', 'patient_t1ce.nii.gz']\"" in card


def test_skull_strip_is_recorded_in_the_bundle_and_applied_at_inference(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from amecam_cli.bundle import open_bundle
    from amecam_cli.cli import main

    from .conftest import save_nifti
    from .test_preprocess import _head_with_scalp

    data = tmp_path / "data"
    for i in range(4):
        volume, _, scalp, lesion = _head_with_scalp(seed=i)
        seg = lesion.astype(np.uint8)
        seg[:, :, :3] = 0  # some normal slices for the classifier
        save_nifti(data / f"C{i}" / f"C{i}_flair.nii.gz", volume)
        save_nifti(data / f"C{i}" / f"C{i}_seg.nii.gz", seg)
    run = tmp_path / "run"
    train_bundle(data, run, settings={**TINY_SETTINGS, "epochs": 1, "stem_stride": 2, "skull_strip": True}, progress=False)
    metadata = json.loads((run / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["preprocessing"] == {"skull_strip": True}
    assert metadata["amecam_training"]["settings"]["skull_strip"] is True
    assert json.loads((run / "slices" / "dataset.json").read_text(encoding="utf-8"))["settings"]["skull_strip"] is True
    assert "skull stripping on" in (run / "docs" / "README.md").read_text(encoding="utf-8")
    assert open_bundle(run).strip_skull
    # inference strips too: the map is zero on the scalp, which the plain brain mask would include
    code = main(["infer", str(data / "C0" / "C0_flair.nii.gz"), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(run),
                 "--save_cam", str(tmp_path / "cam.nii.gz")])
    assert code == 0, capsys.readouterr().err
    cam = nib.load(str(tmp_path / "cam.nii.gz")).get_fdata()
    assert cam[scalp].max() == 0.0 and cam.max() > 0.0


def test_training_on_slices_made_without_skull_stripping_refuses_skull_strip(tmp_path, tiny_dataset, capsys):
    from amecam_cli.cli import main

    assert main(["slice", str(tiny_dataset), "-o", str(tmp_path / "s"), "--image_size", "64"]) == 0
    code = main(["train", "--data_dir", str(tmp_path / "s"), "--output_dir", str(tmp_path / "run"), "--skull_strip",
                 "--image_size", "64", "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "slice dataset was made without skull stripping" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    code = main(["train", "--data_dir", str(tiny_dataset), "--output_dir", str(tmp_path / "run2"), "--skull_strip=maybe"])
    err = capsys.readouterr().err
    assert code == 2 and "--skull_strip is a switch" in err and "Traceback" not in err


def test_resume_with_fusion_attention_switches_a_finished_bundle_to_mf_without_retraining(tmp_path, tiny_bundle):
    import shutil

    import nibabel as nib
    import numpy as np

    from amecam_cli.bundle import open_bundle
    from amecam_cli.cams import compute_maps

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    weights = (run / "models" / "model.pt").read_bytes()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    before = compute_maps(open_bundle(run).network, x, ("amecam", "attention"))
    assert not torch.allclose(before["amecam"], before["attention"], atol=1e-3)  # the two fusions differ here
    from amecam_cli.cli import main

    assert main(["train", "-o", str(run), "--resume", "--fusion", "attention"]) == 0  # the run's own data, as the help says
    assert (run / "models" / "model.pt").read_bytes() == weights  # nothing retrained
    metadata = json.loads((run / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["network_args"]["fusion"] == "attention"
    assert metadata["amecam_training"]["settings"]["fusion"] == "attention"
    assert "the attention map Mf alone (fusion attention)" in (run / "docs" / "README.md").read_text(encoding="utf-8")
    for torchscript in (False, True):  # the eager network and the re-exported trace both make Mf the final map
        with torch.no_grad():
            final = open_bundle(run, torchscript=torchscript).network(x)[:, 0]
        assert torch.allclose(final, before["attention"], atol=1e-5)
    # and a mask from amecam infer is Mf thresholded
    case = tiny_bundle.parent / "data" / "CASE_00" / "CASE_00_flair.nii.gz"
    predictor = open_bundle(run).predictor(device="cpu", gate=False)
    result = predictor.predict_files(str(case), str(tmp_path / "m.nii.gz"), str(tmp_path / "cam.nii.gz"))
    assert result["written"]["mask"] == str(tmp_path / "m.nii.gz")
    cam = nib.load(str(tmp_path / "cam.nii.gz")).get_fdata()
    mask = nib.load(str(tmp_path / "m.nii.gz")).get_fdata()
    np.testing.assert_array_equal(mask > 0, cam >= 0.5)



def test_bundle_predict_files_never_writes_over_its_input(tmp_path, tiny_bundle):
    """The bundle's own writer (python -m monai.bundle run) refuses an output that is an input image,
    even with overwrite, and a mask and map on one file, before any work."""
    import shutil

    from amecam_cli.bundle import open_bundle

    case = tmp_path / "p_flair.nii.gz"
    shutil.copy(tiny_bundle.parent / "data" / "CASE_00" / "CASE_00_flair.nii.gz", case)
    before = case.read_bytes()
    predictor = open_bundle(tiny_bundle).predictor(device="cpu")
    with pytest.raises(ValueError, match="one of the input images"):
        predictor.predict_files(str(case), str(tmp_path / "." / "p_flair.nii.gz"), overwrite=True)
    with pytest.raises(ValueError, match="one of the input images"):
        predictor.predict_files(str(case), str(tmp_path / "m.nii.gz"), str(case), overwrite=True)
    with pytest.raises(ValueError, match="the mask and the map cannot be written to the same file"):
        predictor.predict_files(str(case), str(tmp_path / "m.nii.gz"), str(tmp_path / "m.nii.gz"))
    with pytest.raises(ValueError, match="output must name the mask file"):
        predictor.predict_files(str(case), "")
    with pytest.raises(ValueError, match="image must name the volume to segment"):  # inference.yaml's image: "" unset
        predictor.predict_files("", str(tmp_path / "m.nii.gz"))
    with pytest.raises(ValueError, match="m.nrrd: the bundle reads and writes NIfTI only, so --output must end in .nii.gz"):
        predictor.predict_files(str(case), str(tmp_path / "m.nrrd"))
    with pytest.raises(ValueError, match="c.mha: .*--cam_output must end in"):
        predictor.predict_files(str(case), str(tmp_path / "m.nii.gz"), str(tmp_path / "c.mha"))
    with pytest.raises(ValueError, match="p.mha: .*--image must end in"):
        predictor.predict_files(str(tmp_path / "p.mha"), str(tmp_path / "m.nii.gz"))
    assert case.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p_flair.nii.gz"]


def test_fusion_is_refused_on_a_run_whose_configs_predate_it(tmp_path, tiny_bundle, capsys):
    import shutil

    from amecam_cli.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    config = run / "configs" / "inference.yaml"
    config.write_text("\n".join(line for line in config.read_text(encoding="utf-8").splitlines() if "fusion" not in line) + "\n",
                      encoding="utf-8")
    metadata = (run / "configs" / "metadata.json").read_text(encoding="utf-8")
    code = main(["train", "--data_dir", str(tiny_bundle.parent / "data"), "-o", str(run), "--resume", "--fusion", "attention"])
    err = capsys.readouterr().err
    assert code == 2 and "configs predate --fusion" in err and "Traceback" not in err
    assert (run / "configs" / "metadata.json").read_text(encoding="utf-8") == metadata  # refused before anything was written
    code = main(["train", "--data_dir", str(tiny_bundle.parent / "data"), "-o", str(tmp_path / "new"), "--fusion", "median"])
    err = capsys.readouterr().err
    assert code == 2 and "--fusion must be one of mean, attention, got 'median'" in err
    assert not (tmp_path / "new").exists()


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint_alone(tmp_path, monkeypatch):
    """Ctrl-C while a checkpoint is being written: the last whole checkpoint stays, no half-written temporary file
    is left beside it."""
    from amecam_bundle.scripts import train

    path = tmp_path / "checkpoint.pt"
    train._save({"epoch": 1}, path)

    def half_written(obj, name):
        Path(name).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        train._save({"epoch": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.load(path)["epoch"] == 1
