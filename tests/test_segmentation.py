"""amecam train-seg: pseudo-label U-Net bundles, and how infer / evaluate / explain take them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from amecam_cli.errors import AmecamError
from amecam_cli.cli import main

from .conftest import planted_case, save_nifti


@pytest.fixture(scope="module")
def seg_bundle(tiny_bundle, tmp_path_factory):
    from amecam_cli.segmentation import train_segmentation

    out = tmp_path_factory.mktemp("seg") / "segrun"
    data = tiny_bundle.parent / "data"
    train_segmentation(tiny_bundle, data, out, epochs=2, batch_size=4, device="cpu", progress=False)
    return out


def test_seg_bundle_is_complete_and_uses_the_amecam_split(seg_bundle, tiny_bundle):
    for name in ("configs/metadata.json", "configs/inference.yaml", "configs/train_seg.yaml", "models/model.pt", "models/model.ts",
                 "docs/README.md", "slices/manifest.csv"):
        assert (seg_bundle / name).is_file(), name
    assert not list((seg_bundle / "configs").glob("train_stage*.yaml"))
    meta = json.loads((seg_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    source = json.loads((tiny_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["amecam_training"]["kind"] == "segmentation" and meta["amecam_training"]["labels"] == "pseudo"
    assert meta["amecam_training"]["split"] == source["amecam_training"]["split"]
    # AME-CAM's network_args (stem_stride, fusion) mean nothing for a U-Net; the fusion that labelled it is recorded
    assert "network_args" not in meta and meta["amecam_training"]["pseudo_labels"]["source_fusion"] == "mean"
    pseudo = np.load(next((seg_bundle / "slices" / "pseudo").glob("*.npy")))
    assert pseudo.dtype == np.float16 and 0 <= pseudo.min() and pseudo.max() <= 1


def test_pseudo_labels_follow_the_source_bundles_fusion_and_say_so(seg_bundle, tiny_bundle, tmp_path):
    import shutil

    from amecam_cli.segmentation import train_segmentation

    source = tmp_path / "attention_run"  # what `amecam train --resume --fusion attention` changes: network_args.fusion
    shutil.copytree(tiny_bundle, source)
    metadata_file = source / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    metadata["network_args"]["fusion"] = "attention"
    metadata_file.write_text(json.dumps(metadata), encoding="utf-8")
    out = tmp_path / "seg_attention"
    train_segmentation(source, tiny_bundle.parent / "data", out, epochs=1, batch_size=4, device="cpu", progress=False)
    described = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]["label_description"]
    mean_described = json.loads((seg_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]["label_description"]
    assert "Mf alone, fusion attention" in described and "Mf" not in mean_described
    assert json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]["pseudo_labels"]["source_fusion"] == "attention"
    name = next((seg_bundle / "slices" / "pseudo").glob("*.npy")).name
    assert not np.array_equal(np.load(out / "slices" / "pseudo" / name), np.load(seg_bundle / "slices" / "pseudo" / name))


def test_pseudo_labels_only_on_tumour_slices(seg_bundle):
    import csv

    rows = list(csv.DictReader(open(seg_bundle / "slices" / "manifest.csv", encoding="utf-8")))
    for name in {r["file"] for r in rows}:
        maps = np.load(seg_bundle / "slices" / "pseudo" / f"{name}.npy")
        for r in rows:
            if r["file"] == name and r["label"] != "tumor":
                assert maps[int(r["row"])].max() == 0


def test_infer_and_evaluate_take_the_seg_bundle(tmp_path, seg_bundle, tiny_dataset, capsys):
    image, _ = planted_case(seed=4)
    src = save_nifti(tmp_path / "v_flair.nii.gz", image.astype(np.int16))
    assert main(["infer", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(seg_bundle), "--device", "cpu"]) == 0
    mask = nib.load(str(tmp_path / "m.nii.gz"))
    assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
    # the model card's MONAI command runs the seg bundle's own config, and agrees with amecam infer
    from monai.bundle import run as bundle_run

    card = (seg_bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert "--config_file configs/inference.yaml --bundle_root . --image patient_flair.nii.gz" in card
    bundle_run(config_file=str(seg_bundle / "configs" / "inference.yaml"), bundle_root=str(seg_bundle), image=str(src),
               output=str(tmp_path / "monai.nii.gz"), device="cpu")
    np.testing.assert_array_equal(nib.load(str(tmp_path / "monai.nii.gz")).get_fdata(), mask.get_fdata())
    code = main(["evaluate", "--data_dir", str(tiny_dataset), "--bundle", str(seg_bundle), "-o", str(tmp_path / "r"),
                 "--methods", "amecam,exit1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert set(report["methods"]) == {"amecam", "exit1", "unet_pseudo"}  # its own row beside AME-CAM
    assert report["methods"]["unet_pseudo"]["slice"]["n"] == report["methods"]["amecam"]["slice"]["n"] > 0


def test_volume_rows_score_the_mask_each_bundles_own_inference_writes(tmp_path, seg_bundle, tiny_bundle, tiny_dataset, capsys):
    """The volume level once gated every row by the AME-CAM classifier, the U-Net rows and the training-free
    threshold too, so their 'Volume Dice' was of a mask no command writes (0.500 against the 0.269 of
    amecam infer --bundle SEGRUN on BraTS2021_00006). Each row now scores what its own pipeline writes."""
    from amecam_cli.metrics import dice

    code = main(["evaluate", "--data_dir", str(tiny_dataset), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"),
                 "--methods", "amecam,threshold", "--extra_bundles", str(seg_bundle), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    for bundle, row in ((tiny_bundle, "amecam"), (seg_bundle, "unet_pseudo")):
        out = tmp_path / f"masks_{row}"
        assert main(["infer", str(tiny_dataset), "-o", f"{out}/", "--bundle", str(bundle), "--device", "cpu"]) == 0
        for entry in report["per_case"][row]:
            truth = np.asanyarray(nib.load(str(tiny_dataset / entry["case"] / f"{entry['case']}_seg.nii.gz")).dataobj) > 0
            mask = np.asanyarray(nib.load(str(out / f"{entry['case']}_mask.nii.gz")).dataobj) > 0
            assert entry["dice"] == pytest.approx(dice(mask, truth), abs=1e-6), (row, entry["case"])
    for row in ("unet_pseudo", "threshold"):  # nothing of AME-CAM's in these rows
        assert report["methods"][row]["volume"] == report["methods"][row]["volume_ungated"], row
    assert report["gating"]["gated"] == ["amecam"] and set(report["gating"]["own"]) == {"threshold", "unet_pseudo"}
    text = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "segmentation bundles and the rows without training are not gated" in text


def test_evaluate_finds_the_source_bundle_of_a_unet_also_when_it_was_a_zip(tmp_path, seg_bundle, tiny_bundle, tiny_dataset, capsys):
    """A U-Net trained from an exported AME-CAM zip gave no AME-CAM rows ("not available"): only a folder was looked for."""
    import shutil

    zipped = tmp_path / "amecam.zip"
    assert main(["export", str(tiny_bundle), "-o", str(zipped)]) == 0
    run = tmp_path / "segrun"
    shutil.copytree(seg_bundle, run)
    meta_path = run / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["amecam_training"]["source_bundle"] = meta["amecam_training"]["settings"]["source_bundle"] = str(zipped)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", str(tiny_dataset), "--bundle", str(run), "-o", str(tmp_path / "r"), "--methods", "amecam",
                 "--device", "cpu"]) == 0
    assert "not available" not in capsys.readouterr().err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert set(report["methods"]) == {"amecam", "unet_pseudo"}
    # a source that is gone is named, with the rows that are left out
    zipped.unlink()
    assert main(["evaluate", str(tiny_dataset), "--bundle", str(run), "-o", str(tmp_path / "r2"), "--methods", "amecam",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"the AME-CAM bundle this U-Net came from ({zipped}) is not available" in err and "no amecam rows" in err


def test_explain_on_the_seg_bundle(tmp_path, seg_bundle, capsys):
    image, _ = planted_case(seed=4)
    src = save_nifti(tmp_path / "v_flair.nii.gz", image.astype(np.int16))
    for method in ("seg-gradcam", "seg-hirescam"):
        code = main(["explain", str(src), "--bundle", str(seg_bundle), "-o", str(tmp_path / f"{method}.nii.gz"), "--method", method,
                     "--pixels", "point:16,16,6", "--device", "cpu", "--png_dir", str(tmp_path / "png")])
        assert code == 0, capsys.readouterr().err
        assert ", 1 pixel) -> " in capsys.readouterr().err  # one point: "1 pixel", not "1 pixels"
        heat = np.asanyarray(nib.load(str(tmp_path / f"{method}.nii.gz")).dataobj)
        assert heat.shape == image.shape and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
        assert heat[:, :, 6].max() > 0 and heat[:, :, [z for z in range(12) if z != 6]].max() == 0  # only the point's slice
    from matplotlib.image import imread

    # the montage of a point is its slice alone, with the point marked (it was 12 panels, 11 of them empty)
    assert imread(str(tmp_path / "png" / "v_flair_seg-gradcam.png")).shape[1] < 500
    code = main(["explain", str(src), "--bundle", str(seg_bundle), "-o", str(tmp_path / "pred.nii.gz"), "--device", "cpu",
                 "--png_dir", str(tmp_path / "png_predicted")])  # the predicted tumour's contour is drawn
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "png_predicted" / "v_flair_seg-gradcam.png").is_file()
    code = main(["explain", str(src), "--bundle", str(seg_bundle), "-o", str(tmp_path / "again.nii.gz"), "--method", "seg-hirescam",
                 "--pixels", "point:16,16,6", "--device", "cpu", "--png_dir", str(tmp_path / "png")])  # its montage exists
    assert code == 2 and "v_flair_seg-hirescam.png: output already exists" in capsys.readouterr().err
    assert not (tmp_path / "again.nii.gz").exists()
    code = main(["explain", str(src), "--bundle", str(seg_bundle), "-o", str(tmp_path / "x.nii.gz"), "--layer", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--layer 'nope' is not one of the network's" in err and "nearest" not in err
    assert "the default is " in err and "all of them: " in err and len(err.strip().splitlines()) == 1
    layers = err.split("all of them: ")[1].strip().split(", ")
    typo = layers[1][:-1] + "x"  # one letter off a real name: named first, with its feature-map shape (a list of ~100 came alone)
    code = main(["explain", str(src), "--bundle", str(seg_bundle), "-o", str(tmp_path / "x.nii.gz"), "--layer", typo])
    assert code == 2 and f"nearest: {layers[1]} (" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_explain_refuses_an_amecam_bundle(tmp_path, tiny_bundle, capsys):
    """An AME-CAM bundle's output is (map, slice probability), not class logits: explaining it would be meaningless."""
    image, _ = planted_case(seed=4)
    src = save_nifti(tmp_path / "v_flair.nii.gz", image.astype(np.int16))
    code = main(["explain", str(src), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "e.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "amecam explain needs a segmentation bundle" in err and "amecam cam" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e.nii.gz").exists()


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_augment_flip_is_refused_for_a_seg_bundle(tmp_path, seg_bundle, tiny_dataset, command, capsys):
    """The flips are the AME-CAM network's (AMECAMNet.set_tta); a U-Net bundle has none, so one line, no output."""
    out = tmp_path / "out"
    if command == "infer":
        image, _ = planted_case(seed=4)
        src = save_nifti(tmp_path / "v_flair.nii.gz", image.astype(np.int16))
        args = ["infer", str(src), "-o", str(out / "m.nii.gz")]
    else:
        args = ["evaluate", "--data_dir", str(tiny_dataset), "-o", str(out), "--methods", "amecam"]
    code = main([*args, "--bundle", str(seg_bundle), "--augment", "flip", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment flip is for AME-CAM bundles; this is a U-Net bundle" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "m.nii.gz").exists() and not (out / "report.json").exists()


def test_train_seg_refuses_a_seg_bundle_as_source(tmp_path, seg_bundle, tiny_dataset):
    from amecam_cli.segmentation import train_segmentation

    with pytest.raises(AmecamError, match="needs an AME-CAM bundle"):
        train_segmentation(seg_bundle, tiny_dataset, tmp_path / "x", epochs=1, device="cpu")



def test_train_seg_overwrite_never_clears_its_source_bundle(tmp_path, tiny_bundle, tiny_dataset):
    """`train-seg --bundle RUN -o RUN --overwrite` would delete the AME-CAM bundle it reads; refused first."""
    import shutil

    from amecam_cli.segmentation import train_segmentation

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    weights = (run / "models" / "model.pt").read_bytes()
    with pytest.raises(AmecamError, match="this input lies inside .*run, which --overwrite would clear"):
        train_segmentation(run, tiny_dataset, run, epochs=1, device="cpu", overwrite=True, progress=False)
    assert (run / "models" / "model.pt").read_bytes() == weights


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--seed", "-1"], "--seed must be >= 0, got -1"),  # was a numpy traceback
        (["--learning_rate", "-1"], "--learning_rate must be a number > 0, got -1.0"),  # was torch's, after slicing
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--augment", "mirror"], "--augment must be one of none, flip, got 'mirror'"),
    ],
)
def test_train_seg_bad_options_are_refused_before_any_work(tmp_path, tiny_bundle, tiny_dataset, capsys, option, message):
    code = main(["train-seg", "--bundle", str(tiny_bundle), "--data_dir", str(tiny_dataset), "--output_dir", str(tmp_path / "seg"), *option])
    err = capsys.readouterr().err
    assert code == 2 and f"amecam: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "seg").exists()


def test_supervised_upper_bound_uses_masks(tmp_path, tiny_bundle):
    from amecam_cli.segmentation import train_segmentation

    out = tmp_path / "sup"
    train_segmentation(tiny_bundle, tiny_bundle.parent / "data", out, epochs=1, batch_size=4, device="cpu", supervised=True, progress=False)
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["amecam_training"]["labels"] == "masks" and "upper bound" in meta["name"]
    assert not (out / "slices" / "pseudo").exists()


def test_resume_continues_with_the_runs_own_bundle_data_and_settings(seg_bundle, tiny_bundle, tmp_path, capsys):
    """amecam train-seg -o SEGRUN --resume continues an interrupted run; it once needed the bundle and data again,
    and took other options without a word (--epochs 5 on resume was ignored)."""
    import shutil

    import torch

    run = tmp_path / "segrun"
    shutil.copytree(seg_bundle, run)
    checkpoint = run / "models" / "checkpoints" / "seg.pt"
    state = torch.load(checkpoint, weights_only=False)  # roll back to "interrupted after epoch 1"
    state["epoch"], state["history"] = 0, state["history"][:1]
    state["best"] = {"dice": state["history"][0]["val_dice"], "epoch": 1}
    torch.save(state, checkpoint)
    for name in ("seg.json", "model.pt", "model.ts"):
        (run / "models" / name).unlink()
    metadata = (run / "configs" / "metadata.json").read_text(encoding="utf-8")
    for argv, message in ((["--epochs", "5"], "--epochs 5 differs from the run being resumed (2)"),
                          (["--bundle", str(seg_bundle)], "is not the AME-CAM bundle of the run being resumed"),
                          (["--supervised"], "--supervised True differs from the run being resumed (False)")):
        assert main(["train-seg", "-o", str(run), "--resume", *argv]) == 2
        assert message in capsys.readouterr().err, argv
    assert (run / "configs" / "metadata.json").read_text(encoding="utf-8") == metadata  # refused before anything was written
    assert main(["train-seg", "-o", str(run), "--resume", "--device", "cpu"]) == 0, capsys.readouterr().err
    history = json.loads((run / "models" / "seg.json").read_text(encoding="utf-8"))["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == state["history"][0]  # epoch 1 was not trained again
    assert "seg: resuming after epoch 1" in (run / "logs" / "train.log").read_text(encoding="utf-8")
    assert (run / "models" / "model.ts").is_file()
    # a new run still needs the bundle and the data
    assert main(["train-seg", "-o", str(tmp_path / "new"), "--bundle", str(tiny_bundle)]) == 2
    assert "train-seg needs --bundle RUN, --data_dir DIR" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_train_seg_augment_flip_labels_with_the_augmented_map_and_resumes_with_it(seg_bundle, tiny_bundle, tmp_path, capsys):
    """`train-seg --augment flip`: the pseudo-labels are the flip-averaged AME-CAM map (not the plain one), the bundle says so,
    and --resume keeps it and refuses another choice."""
    import torch

    from amecam_cli.bundle import open_bundle
    from amecam_cli.cams import compute_maps
    from amecam_cli.segmentation import _read_manifest

    out = tmp_path / "seg_flip"
    data = tiny_bundle.parent / "data"
    code = main(["train-seg", "--bundle", str(tiny_bundle), "--data_dir", str(data), "--output_dir", str(out), "--epochs", "1",
                 "--batch_size", "4", "--device", "cpu", "--augment", "flip"])
    assert code == 0, capsys.readouterr().err
    training = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]
    assert "with flip test-time augmentation" in training["label_description"]
    assert training["settings"]["tta"] == training["pseudo_labels"]["source_tta"] == "flip"
    # the labels of a case's tumour slices are the flipped network's map, and differ from the unaugmented ones
    rows = _read_manifest(out / "slices")
    name = next(r["file"] for r in rows if r["label"] == "tumor")
    tumour = [int(r["row"]) for r in rows if r["file"] == name and r["label"] == "tumor"]
    images = torch.from_numpy(np.load(out / "slices" / "images" / f"{name}.npy").astype(np.float32))[tumour]
    flipped = compute_maps(open_bundle(tiny_bundle, device="cpu", tta="flip").network, images, ("amecam",), device="cpu")["amecam"]
    labels = np.load(out / "slices" / "pseudo" / f"{name}.npy")[tumour].astype(np.float32)
    np.testing.assert_allclose(labels, flipped.numpy(), atol=2e-3)  # stored as float16
    assert np.abs(labels - np.load(seg_bundle / "slices" / "pseudo" / f"{name}.npy")[tumour].astype(np.float32)).max() > 0.05
    code = main(["train-seg", "--output_dir", str(out), "--resume", "--augment", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment 'none' differs from the run being resumed ('flip')" in err
    # a run from before 0.5.22 saved no tta: it was labelled without augmentation, and --resume says so
    settings_file = out / "configs" / "amecam_train.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    del settings["tta"]
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    code = main(["train-seg", "--output_dir", str(out), "--resume", "--augment", "flip"])
    assert code == 2 and "--augment 'flip' differs from the run being resumed ('none')" in capsys.readouterr().err
    code = main(["train-seg", "--bundle", str(tiny_bundle), "--data_dir", str(data), "--output_dir", str(tmp_path / "sup"), "--supervised",
                 "--augment", "flip"])
    assert code == 2 and "--augment flip makes pseudo-labels; --supervised trains on the expert masks" in capsys.readouterr().err
