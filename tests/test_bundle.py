"""Bundles: export, verify, zips, and running with plain `python -m monai.bundle run`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from amecam_cli.bundle import bundle_template, export_bundle, open_bundle, verify_bundle
from amecam_cli.errors import AmecamError

from .conftest import planted_case, save_nifti


def test_template_is_installed_with_the_package():
    root = bundle_template()
    for name in ("configs/metadata.json", "configs/inference.yaml", "configs/inference_seg.yaml", "configs/evaluate.yaml",
                 "configs/train_stage0.yaml", "configs/train_stage1.yaml", "configs/train_stage2.yaml", "configs/train_seg.yaml",
                 "configs/multi_gpu_train.yaml", "configs/logging.conf", "scripts/networks.py", "docs/README.md", "LICENSE"):
        assert (root / name).is_file(), name


def test_export_and_verify_offline(tmp_path, tiny_bundle):
    archive = export_bundle(tiny_bundle, tmp_path / "amecam_flair_v0.2.0.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert "amecam_flair_v0.2.0/models/model.pt" in names and "amecam_flair_v0.2.0/models/model.ts" in names
    assert not any("/slices/" in n or "/checkpoints/" in n or "/logs/" in n for n in names)
    rows = verify_bundle(archive)
    assert all(passed for _, passed, _ in rows), rows
    assert {name for name, _, _ in rows} >= {"metadata fields", "network input/output vs network_data_format", "TorchScript matches eager"}
    with pytest.raises(AmecamError, match="already exists"):
        export_bundle(tiny_bundle, archive)


def test_a_hand_edited_config_with_a_yaml_slip_is_named_in_one_line(tmp_path, tiny_bundle):
    """MONAI users edit configs/*.yaml; a slip gave a YAML traceback from verify, cam and --resume."""
    import shutil

    from amecam_cli.workflow import run_config

    edited = tmp_path / "edited"
    shutil.copytree(tiny_bundle, edited, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    for name in ("inference.yaml", "train_stage1.yaml"):
        config = edited / "configs" / name
        lines = len(config.read_text(encoding="utf-8").splitlines())
        with config.open("a", encoding="utf-8") as handle:
            handle.write("probability_threshold: [0.5\n")
        expected = f"{config}: cannot read (expected ',' or ']', but got '<stream end>' at line {lines + 2}, column 1)"
        with pytest.raises(AmecamError, match=re.escape(expected)) as error:
            if name == "inference.yaml":
                open_bundle(edited, device="cpu")
            else:
                run_config(edited, name)
        assert "\n" not in str(error.value)


def test_a_zip_with_nowhere_to_unpack_says_where_and_what_to_do(tmp_path, tiny_bundle, monkeypatch):
    from amecam_cli.bundle import open_bundle

    archive = export_bundle(tiny_bundle, tmp_path / "b.zip")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    monkeypatch.setenv("AMECAM_CACHE", str(tmp_path / "file" / "cache"))  # a path under a file cannot be made
    with pytest.raises(AmecamError, match=r"b\.zip: cannot unpack into .*file/cache.*AMECAM_CACHE"):
        open_bundle(archive)
    monkeypatch.setenv("AMECAM_CACHE", str(tmp_path / "cache"))
    root = open_bundle(archive).root
    assert root.is_relative_to(tmp_path / "cache")
    # a parallel job that unpacked the same zip first: the second unpack keeps its copy and leaves nothing behind
    from amecam_cli.bundle import _safe_extract

    _safe_extract(archive, root)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name] and (root / "models" / "model.pt").is_file()


def test_export_refuses_weights_that_do_not_load(tmp_path, tiny_bundle):
    """A zip is for sharing: one whose weights belong to another network fails on every receiver's machine."""
    import shutil

    import torch

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    state = torch.load(broken / "models" / "model.pt", weights_only=True)
    del state[next(iter(state))]
    torch.save(state, broken / "models" / "model.pt")
    with pytest.raises(AmecamError, match=r"models/model.pt: these weights belong to another network.*; not exported"):
        export_bundle(broken, tmp_path / "shared.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_export_never_packs_itself_or_hidden_leftovers(tmp_path, tiny_bundle):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    (run / "configs" / ".metadata.json.tmp").write_text("left by a crash", encoding="utf-8")
    with pytest.raises(AmecamError, match="x.zip: inside the bundle's configs/ folder, which the export packs"):
        export_bundle(run, run / "configs" / "x.zip")
    assert sorted(p.name for p in (run / "configs").iterdir() if p.suffix in (".zip", ".tmp")) == [".metadata.json.tmp"]
    with zipfile.ZipFile(export_bundle(run, run / "run.zip")) as zf:  # beside the packed folders is fine
        names = zf.namelist()
    assert "run/configs/metadata.json" in names and not any("/." in n or n.endswith(".zip") for n in names)


def test_verify_reports_a_broken_bundle(tmp_path, tiny_bundle):
    import json
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken, ignore=shutil.ignore_patterns("slices", "checkpoints"))
    meta = json.loads((broken / "configs" / "metadata.json").read_text(encoding="utf-8"))
    del meta["intended_use"]
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    rows = {name: (passed, detail) for name, passed, detail in verify_bundle(broken)}
    assert rows["metadata fields"] == (False, "missing: intended_use")
    assert rows["network input/output vs network_data_format"][0] is False


def _zip_with(tmp_path, entries):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("bad", ["../outside.txt", "/abs/path.txt", "b/../../outside.txt"])
def test_zip_entries_outside_the_bundle_are_refused(tmp_path, bad, monkeypatch):
    monkeypatch.setenv("AMECAM_CACHE", str(tmp_path / "cache"))
    archive = _zip_with(tmp_path, [("b/configs/metadata.json", "{}"), (bad, "x")])
    with pytest.raises(AmecamError, match="refusing entry"):
        open_bundle(archive)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "cache" / "outside.txt").exists()


def test_zip_symlink_entry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AMECAM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("b/configs/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(AmecamError, match="symbolic link"):
        open_bundle(path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(AmecamError, match="not a bundle"):
        open_bundle(tmp_path)
    (tmp_path / "x.zip").write_bytes(b"junk")
    with pytest.raises(AmecamError, match="not a valid zip"):
        open_bundle(tmp_path / "x.zip")


def test_monai_bundle_run_without_amecam(tmp_path, tiny_bundle):
    """The inference config runs with `python -m monai.bundle run` in a process that cannot import amecam."""
    image, _ = planted_case(seed=5)
    affine = np.diag([1.1, 0.9, 2.0, 1.0])
    src = save_nifti(tmp_path / "vol_flair.nii.gz", image.astype(np.int16), affine)
    out = tmp_path / "vol_mask.nii.gz"
    guard = tmp_path / "guard"
    guard.mkdir()
    for name in ("amecam_cli", "amecam_bundle"):  # shadow the toolkit: importing it fails
        (guard / name).mkdir()
        (guard / name / "__init__.py").write_text("raise ImportError('amecam must not be needed')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(guard)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(tiny_bundle / "configs" / "inference.yaml"),
           "--bundle_root", str(tiny_bundle), "--image", str(src), "--output", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mask = nib.load(str(out))
    assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, affine)
    # bad input: one line naming it, not MONAI's ~55 lines of two tracebacks; AMECAM_TRACEBACK=1 still gives them
    missing = tmp_path / "gone_flair.nii.gz"
    cmd[cmd.index(str(src))] = str(missing)
    for extra, one_line in [({}, True), ({"AMECAM_TRACEBACK": "1"}, False)]:
        proc = subprocess.run(cmd + ["--overwrite", "true"], capture_output=True, text=True, env={**env, **extra}, cwd=tmp_path, timeout=300)
        assert proc.returncode == 1 and ("Traceback" not in proc.stderr) == one_line, proc.stderr[-2000:]
        assert f"{missing}: no such file" in proc.stderr
    assert "RuntimeError: Failed to evaluate" in proc.stderr
    assert nib.load(str(out)).shape == image.shape  # nothing lost


def test_one_line_errors_are_only_the_bundles_own_input_checks():
    """The one-line report is for errors the bundle's checks raise; a ValueError deep in a library keeps its traceback."""
    from amecam_bundle.scripts.errors import input_error
    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet

    def wrapped(action):
        try:
            try:
                action()
            except Exception as exc:
                raise RuntimeError("Failed to evaluate ConfigExpression") from exc  # as MONAI wraps it
        except RuntimeError as exc:
            return exc

    ours = wrapped(lambda: VolumePredictor(AMECAMNet(in_channels=1), image_size=64, device="cpu", batch_size=-3))
    assert "batch_size must be a whole number" in input_error(ours)
    assert input_error(wrapped(lambda: np.zeros(3).reshape(2))) is None  # raised inside numpy
    assert input_error(wrapped(lambda: {}["key"])) is None  # not an input check's kind of error
    import sys

    from amecam_bundle.scripts.errors import one_line_errors

    before = sys.excepthook
    one_line_errors()  # amecam runs the same configs in its own process: its tracebacks (--debug) stay Python's
    assert sys.excepthook is before


def test_an_interrupted_bundle_run_says_so_in_one_line(monkeypatch, capsys):
    """Ctrl-C in python -m monai.bundle run: one line, not a traceback; under torchrun the launcher reports it once
    (two processes printed about 80 lines each)."""
    from amecam_bundle.scripts.errors import _hook

    shown = []
    for env in ({}, {"RANK": "1"}, {"AMECAM_TRACEBACK": "1"}):
        for key in ("RANK", "AMECAM_TRACEBACK"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _hook(KeyboardInterrupt, KeyboardInterrupt(), None, fallback=lambda *args: shown.append(args[0]))
        shown.append(capsys.readouterr().err)
    assert shown[0].startswith("interrupted (checkpoints are kept") and shown[0].count("\n") == 1
    assert shown[1] == ""
    assert shown[2:] == [KeyboardInterrupt, ""]  # AMECAM_TRACEBACK=1: Python's own report


def test_each_config_says_what_an_interruption_leaves():
    """Only a training config's Ctrl-C line suggests --resume: inference and evaluation configs have no resume, and
    inference writes each file whole (a temporary name, then a rename), so it says that instead."""
    import yaml

    from amecam_bundle.scripts.errors import _hook

    lines = {}
    for config in sorted((bundle_template() / "configs").glob("*.yaml")):
        for entry in yaml.safe_load(config.read_text()).get("run", []):
            if isinstance(entry, dict) and entry.get("_target_") == "scripts.errors.one_line_errors":
                lines[config.stem] = entry.get("interrupted")
    assert set(lines) == {"train_stage0", "train_stage1", "train_stage2", "train_seg", "inference", "inference_seg",
                          "evaluate"}
    for stem, interrupted in lines.items():
        assert interrupted, f"{stem}.yaml says nothing about an interruption"
        assert ("--resume" in interrupted) == stem.startswith("train"), (stem, interrupted)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        _hook(KeyboardInterrupt, KeyboardInterrupt(), None, interrupted=lines["inference"])
    assert err.getvalue() == f"interrupted ({lines['inference']})\n"


def test_bundle_missing_files_and_unwritable_outputs_are_named(tmp_path):
    """A slice folder without dataset.json, a slice array missing under it, an output folder that cannot be
    written: each named in one line (the last was found only after the whole volume had been predicted)."""
    import json

    from amecam_bundle.scripts.data import SliceSet
    from amecam_bundle.scripts.errors import input_error
    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet

    with pytest.raises(FileNotFoundError, match="not a slice dataset .no dataset.json; amecam slice writes one"):
        SliceSet(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"settings": {"modalities": ["flair"], "image_size": 8}}), encoding="utf-8")
    (tmp_path / "manifest.csv").write_text("file,row,split,label\na,0,train,tumor\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as caught:
        SliceSet(tmp_path).batch([0])  # numpy's open() raises it: named by the file, not by numpy's traceback
    assert input_error(caught.value) == f"{tmp_path / 'images' / 'a.npy'}: no such file or directory"

    image, _ = planted_case(seed=6)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.float32))
    (tmp_path / "afile").write_text("", encoding="utf-8")
    predictor = VolumePredictor(AMECAMNet(in_channels=1), image_size=64, device="cpu")
    predictor.predict_canonical = None  # never reached: the output is checked before the work
    with pytest.raises(PermissionError, match=re.escape(f"{tmp_path / 'afile' / 'm.nii.gz'}: cannot write there")):
        predictor.predict_files(str(src), str(tmp_path / "afile" / "m.nii.gz"))
    from amecam_bundle.scripts.evaluate import evaluate_datalist

    save_nifti(tmp_path / "p_seg.nii.gz", (image > image.mean()).astype(np.uint8))
    (tmp_path / "list.json").write_text(json.dumps({"testing": [{"flair": "p_flair.nii.gz", "label": "p_seg.nii.gz"}]}), encoding="utf-8")
    with pytest.raises(PermissionError, match=re.escape(f"{tmp_path / 'afile' / 'd.json'}: cannot write there")):
        evaluate_datalist(predictor, str(tmp_path / "list.json"), ["flair"], str(tmp_path / "afile" / "d.json"))


def test_monai_bundle_evaluate_config(tmp_path, tiny_bundle):
    """configs/evaluate.yaml (merged with inference.yaml) scores a datalist with plain monai.bundle run."""
    import json

    image, seg = planted_case(seed=6)
    save_nifti(tmp_path / "a_flair.nii.gz", image.astype(np.int16))
    save_nifti(tmp_path / "a_seg.nii.gz", seg)
    (tmp_path / "list.json").write_text(json.dumps({"testing": [{"case": "a", "flair": "a_flair.nii.gz", "label": "a_seg.nii.gz"}]}), encoding="utf-8")
    configs = f"['{tiny_bundle / 'configs' / 'inference.yaml'}','{tiny_bundle / 'configs' / 'evaluate.yaml'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(tiny_bundle),
           "--datalist", str(tmp_path / "list.json"), "--output", str(tmp_path / "dice.json"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "dice.json").read_text(encoding="utf-8"))
    assert [r["case"] for r in result["cases"]] == ["a"] and 0 <= result["mean_dice"] <= 1


def test_monai_ckpt_export_with_tracing_as_the_model_card_says(tmp_path, tiny_bundle):
    """MONAI's own TorchScript export works on the bundle (traced, as the card says) and gives the eager output."""
    import torch

    from amecam_cli.bundle import instantiate_network

    card = (tiny_bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert "ckpt_export network_def" in card and '--use_trace True --input_shape "[1, 1, 64, 64]"' in card
    command = next(line for line in card.splitlines() if line.startswith("python -m monai.bundle ckpt_export"))
    command = command.replace("--filepath model.ts", f"--filepath {tmp_path / 'm.ts'}")
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tiny_bundle, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    network = instantiate_network(tiny_bundle)
    network.load_state_dict(torch.load(tiny_bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.ts"))(x), network.eval()(x))


def _messages(exc: BaseException) -> str:
    """An exception's message and those of its causes (MONAI's runner wraps the script's own error)."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__
    return " | ".join(parts)


def test_monai_bundle_run_reads_true_and_false_as_words(tmp_path, tiny_bundle):
    """`python -m monai.bundle run ... --overwrite false` hands the config the string 'false', which is truthy:
    it once replaced the existing mask. The scripts read the words true/false and refuse anything else."""
    from monai.bundle import run as bundle_run

    from amecam_bundle.scripts.options import switch

    assert [switch(v, "x") for v in (True, False, "true", "False", "no", "YES", 1, 0, "1", "0", np.bool_(True), np.int64(0))] == [
        True, False, True, False, False, True, True, False, True, False, True, False]
    with pytest.raises(ValueError, match="crf must be true or false, got 'maybe'"):
        switch("maybe", "crf")
    image, _ = planted_case(seed=6)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"keep me")
    common = {"config_file": str(tiny_bundle / "configs" / "inference.yaml"), "bundle_root": str(tiny_bundle), "device": "cpu",
              "image": str(src), "output": str(out)}
    with pytest.raises(Exception) as info:
        bundle_run(**common, overwrite="false")
    assert "output already exists" in _messages(info.value)
    with pytest.raises(Exception) as info:
        bundle_run(**common, overwrite="True", crf="maybe")
    assert "crf must be true or false, got 'maybe'" in _messages(info.value)
    assert out.read_bytes() == b"keep me"
    bundle_run(**common, overwrite="true")
    assert nib.load(str(out)).shape == image.shape


def test_bundle_reads_volumes_as_amecam_does(tmp_path):
    """A NaN in the volume once gave an empty mask without a word through python -m monai.bundle run, and an
    (x, y, z, 1) volume, which amecam infer takes, was refused."""
    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet

    image, _ = planted_case(seed=6)
    image = image.astype(np.float32)
    image[3, 4, 5] = np.nan
    src = save_nifti(tmp_path / "p_flair.nii.gz", image)
    predictor = VolumePredictor(AMECAMNet(in_channels=1), image_size=64, device="cpu")
    with pytest.raises(ValueError, match="p_flair.nii.gz: volume contains 1 NaN or infinite value$"):
        predictor.predict_files(str(src), str(tmp_path / "m.nii.gz"))
    assert not (tmp_path / "m.nii.gz").exists()
    # as amecam reads volumes: (x, y, z, 1) is one volume, whose mask and map keep that exact shape (0.5.23;
    # 3-D before); one slice is not a volume
    image = np.nan_to_num(image)
    four = save_nifti(tmp_path / "four_flair.nii.gz", image[..., None])
    predictor.predict_files(str(four), str(tmp_path / "four_mask.nii.gz"), str(tmp_path / "four_cam.nii.gz"))
    for name in ("four_mask.nii.gz", "four_cam.nii.gz"):
        assert nib.load(str(tmp_path / name)).shape == (*image.shape, 1)
    moved = save_nifti(tmp_path / "moved_t1ce.nii.gz", image, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="moved_t1ce.nii.gz: not on the same voxel grid"):
        predictor.predict_files([str(four), str(moved)], str(tmp_path / "two_mask.nii.gz"))
    flat = save_nifti(tmp_path / "flat_flair.nii.gz", image[:, :, :1])
    with pytest.raises(ValueError, match=re.escape(f"flat_flair.nii.gz: expected a 3-D volume, got shape {image.shape[:2] + (1,)}")):
        predictor.predict_files(str(flat), str(tmp_path / "flat_mask.nii.gz"))


def test_bundle_evaluation_reads_a_datalist_as_amecam_does(tmp_path):
    """configs/evaluate.yaml once knew only exact modality keys and 'label' (a MONAI-style 'image' entry
    failed with KeyError: 'flair'), ignored 'dataroot' and 'brainmask', and replaced its output."""
    import json

    from amecam_bundle.scripts import evaluate
    from amecam_bundle.scripts.datalist import read_datalist
    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet
    from amecam_cli import cases as toolkit

    data = tmp_path / "data"
    data.mkdir()
    image, seg = planted_case(seed=6)
    save_nifti(data / "a_flair.nii.gz", image.astype(np.int16))
    save_nifti(data / "a_seg.nii.gz", seg)
    save_nifti(data / "a_brain.nii.gz", (image > 0).astype(np.uint8))
    save_nifti(data / "small_seg.nii.gz", seg[:-1])
    nib.save(nib.Nifti1Image(seg, np.diag([-1.0, 1.0, 1.0, 1.0])), str(data / "flipped_seg.nii.gz"))
    nan = image.astype(np.float32)
    nan[0, 0, 0] = np.nan
    save_nifti(data / "nan_flair.nii.gz", nan)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"dataroot": "data", "testing": [
        {"ID": "a", "Image": "a_flair.nii.gz", "Seg": "a_seg.nii.gz", "brainmask": "a_brain.nii.gz"},
        {"t2f": "a_flair.nii.gz", "label": "a_seg.nii.gz"},
        {"flair": "a_flair.nii.gz", "case": "c"}],  # no label: skipped
        "test": ["a_flair.nii.gz"]}), encoding="utf-8")  # a Decathlon-style list of bare images: not cases
    read = read_datalist(listing, ["flair"])
    assert [(c["case"], c["images"], c["label"], c["brainmask"]) for c in read] == [
        ("a", {"flair": data / "a_flair.nii.gz"}, data / "a_seg.nii.gz", data / "a_brain.nii.gz"),
        ("a_flair", {"flair": data / "a_flair.nii.gz"}, data / "a_seg.nii.gz", None),
        ("c", {"flair": data / "a_flair.nii.gz"}, None, None)]
    known = toolkit.find_cases(listing, ("flair",), require_label=False)  # amecam reads it with the same reader
    assert [(c["case"], c["images"], c["label"], c["brainmask"]) for c in read] == [
        (k.case_id, k.images, k.label, k.brainmask) for k in known]
    predictor = VolumePredictor(AMECAMNet(in_channels=1), image_size=64, device="cpu")
    out = tmp_path / "dice.json"
    result = evaluate.evaluate_datalist(predictor, str(listing), ["flair"], str(out))
    assert [r["case"] for r in result["cases"]] == ["a", "a_flair"] and json.loads(out.read_text(encoding="utf-8")) == result
    with pytest.raises(FileExistsError, match="dice.json: output already exists"):
        evaluate.evaluate_datalist(predictor, str(listing), ["flair"], str(out))
    assert evaluate.evaluate_datalist(predictor, str(listing), ["flair"], str(out), overwrite="true") == result
    bad = [({"testing": [{"t1": "a_flair.nii.gz", "label": "a_seg.nii.gz"}]}, ValueError, "entry 0: no 'flair' file (keys: t1, label)"),
           ([{"image": "a_flair.nii.gz", "label": "a_seg.nii.gz"}], ValueError, "reads one key per modality, not 'image'"),
           ([{"flair": "b_flair.nii.gz", "label": "a_seg.nii.gz"}], FileNotFoundError, "entry 0: " + str(data / "b_flair.nii.gz") + ": no such file"),
           ([{"flair": "a_flair.nii.gz"}], ValueError, "no entry has a label"),
           ([{"flair": "a_flair.nii.gz", "label": "small_seg.nii.gz"}], ValueError, "small_seg.nii.gz: label has shape"),
           ([{"flair": "nan_flair.nii.gz", "label": "a_seg.nii.gz"}], ValueError, "volume contains 1 NaN or infinite value"),
           ([{"flair": "a_flair.nii.gz", "label": "flipped_seg.nii.gz"}], ValueError, "flipped_seg.nii.gz: label is not on the image's voxel grid"),
           ([3], ValueError, "datalist entry 0 must be an object"),
           ([{"flair": "a_flair.nii.gz", "label": "a_seg.nii.gz"}] * 2, ValueError, "case ids must be unique, these repeat: data")]
    for index, (content, error, message) in enumerate(bad):
        listing = data / f"bad{index}.json"
        listing.write_text(json.dumps(content), encoding="utf-8")
        modalities = ["flair", "t1ce"] if "one key per modality" in message else ["flair"]
        with pytest.raises(error, match=re.escape(message)):
            evaluate.evaluate_datalist(predictor, str(listing), modalities, str(tmp_path / f"d{index}.json"))
        assert not (tmp_path / f"d{index}.json").exists()


def test_predictor_refuses_out_of_range_options_by_name():
    """Through python -m monai.bundle run, --batch_size -3 failed in torch.cat, --threshold abc named no option,
    and --probability_threshold 2, --min_component_voxels -1 and --batch_size 2.5 were taken silently."""
    from amecam_bundle.scripts.inference import VolumePredictor
    from amecam_bundle.scripts.networks import AMECAMNet

    net = AMECAMNet(in_channels=1)
    for option, value, message in [("threshold", "abc", "threshold must be a number in [0, 1], got 'abc'"),
                                   ("threshold", 1.5, "threshold must be a number in [0, 1], got 1.5"),
                                   ("probability_threshold", 2, "probability_threshold must be a number in [0, 1], got 2"),
                                   ("batch_size", -3, "batch_size must be a whole number >= 1 (or null for the default), got -3"),
                                   ("batch_size", 2.5, "batch_size must be a whole number >= 1 (or null for the default), got 2.5"),
                                   ("min_component_voxels", -1, "min_component_voxels must be a whole number >= 0, got -1"),
                                   ("image_size", "big", "image_size must be a whole number >= 1, got 'big'")]:
        kwargs = {"image_size": 64, "device": "cpu", option: value}
        with pytest.raises(ValueError, match=re.escape(message)):
            VolumePredictor(net, **kwargs)
    predictor = VolumePredictor(net, image_size=64.0, device="cpu", batch_size="4", threshold="0.3", min_component_voxels=10.0)
    assert (predictor.image_size, predictor.batch_size, predictor.threshold, predictor.min_component_voxels) == (64, 4, 0.3, 10)
    assert VolumePredictor(net, image_size=64, device="cpu", batch_size=None).batch_size > 0


def test_training_configs_refuse_bad_numbers_and_words_by_name(tmp_path):
    """The stage configs run through python -m monai.bundle run as well: --epochs 2.5 or --balance false
    (a truthy string) were taken silently."""
    from amecam_bundle.scripts.networks import MultiExitResNet
    from amecam_bundle.scripts.train import ClassifierTrainer

    common = {"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "epochs": 1, "device": "cpu"}
    for option, value, message in [("epochs", 2.5, "epochs must be a whole number >= 0, got 2.5"),
                                   ("epochs", -1, "epochs must be a whole number >= 0, got -1"),
                                   ("batch_size", 1, "batch_size must be a whole number >= 2, got 1"),
                                   ("learning_rate", "fast", "learning_rate must be a number >= 0, got 'fast'"),
                                   ("balance", "maybe", "balance must be true or false, got 'maybe'"),
                                   ("resume", "sometimes", "resume must be true or false, got 'sometimes'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ClassifierTrainer(MultiExitResNet(1), **{**common, option: value})
    trainer = ClassifierTrainer(MultiExitResNet(1), **{**common, "epochs": "3", "balance": "false", "resume": "False"})
    assert (trainer.epochs, trainer.balance, trainer.resume) == (3, False, False)

    from amecam_bundle.scripts.networks import SegmentationNet
    from amecam_bundle.scripts.train_seg import SegmentationTrainer

    for option, value, message in [("uncertainty_weight", 2, "uncertainty_weight must be a number in [0, 1], got 2"),
                                   ("uncertainty_margin", 0.5, "uncertainty_margin must be in [0, 0.5), got 0.5"),
                                   ("uncertainty_margin", "wide", "uncertainty_margin must be a number in [0, 0.5], got 'wide'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            SegmentationTrainer(SegmentationNet(1), **{**common, option: value})


def test_an_interrupted_bundle_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """The bundle writes a mask under a temporary name and renames it; a write that fails or is interrupted half-way
    leaves neither the mask nor the temporary file."""
    import nibabel

    from amecam_bundle.scripts.inference import VolumePredictor

    reference = nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4))

    def half_written(image, name):
        Path(name).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(nibabel, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        VolumePredictor._save_nifti(np.ones((4, 4, 2), np.uint8), reference, str(tmp_path / "mask.nii.gz"))
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_export_leaves_no_partial_zip(tmp_path, tiny_bundle, monkeypatch):
    """Ctrl-C half-way through amecam export: no zip under the final name and no temporary one beside it."""
    written = []

    def interrupted_after_two(self, filename, arcname=None, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(arcname)
        return original(self, filename, arcname, *args, **kwargs)

    original = zipfile.ZipFile.write
    monkeypatch.setattr(zipfile.ZipFile, "write", interrupted_after_two)
    out = tmp_path / "shared"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_bundle, out / "amecam_flair_v0.2.0.zip")
    assert len(written) == 2 and list(out.iterdir()) == []
