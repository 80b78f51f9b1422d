"""The amecam command line, tested in-process through main()."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from amecam_cli import __version__
from amecam_cli.cli import _int, main

from .conftest import planted_case, save_nifti, write_brats_case


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = ("synth", "slice", "train", "infer", "export", "verify", "cam", "crf", "evaluate", "train-seg", "explain", "demo")


def test_help_lists_every_command(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert f"\n     {command}\n" in out + err, command


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_documents_its_arguments(capsys, command):
    import inspect
    import re

    from amecam_cli.cli import _commands

    code, out, err = run(capsys, command, "--help")
    text = out + err
    assert code == 0 and "Example: amecam" in text
    for name in inspect.signature(_commands()[command]).parameters:
        assert name.upper() in text or f"--{name}" in text, (command, name)
    assert "Type: " in text and "Default: " in text
    # each argument's whole description reaches the screen (Fire's docstring parser cut one at "way: --resume")
    args = inspect.getdoc(_commands()[command]).split("Args:\n", 1)[1]
    flat = " ".join(text.split())
    for name, description in re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", args, flags=re.M | re.S):
        assert " ".join(description.split()) in flat, (command, name)


def test_help_goes_to_stdout_without_fire_notes(capsys):
    # `amecam infer --help | less` must show the help: it went to stderr, after a line
    # "INFO: Showing help with the command 'amecam infer -- --help'." and with types like Optional['str | None']
    for argv in (["--help"], ["infer", "--help"], ["infer", "-h"], ["train", "--epochs", "3", "--help"]):
        code, out, err = run(capsys, *argv)
        assert code == 0 and "NAME" in out and "SYNOPSIS" in out, argv
        assert err == "", (argv, err)
        assert "INFO:" not in out and "'" not in "".join(line for line in out.splitlines() if "Type:" in line), argv
    assert "Type: Optional[str]" in run(capsys, "infer", "--help")[1]


def test_version(capsys):
    assert run(capsys, "--version")[:2] == (0, f"amecam {__version__}\n")


def test_slice_end_to_end_with_short_output_flag(capsys, tiny_dataset, tmp_path):
    code, _, err = run(capsys, "slice", str(tiny_dataset), "-o", str(tmp_path / "s"), "--modality", "flair,t1ce",
                       "--image_size", "16", "--seed", "0012")
    assert code == 0, err
    with open(tmp_path / "s" / "manifest.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["case"] for r in rows} == {f"CASE_{i:02d}" for i in range(6)}


def test_every_short_flag_on_a_help_screen_is_taken(capsys, tiny_dataset, tmp_path):
    import re

    from amecam_cli.cli import _commands, _short_flags

    for name, command in _commands().items():
        code, out, err = run(capsys, name, "--help")
        shown = dict(re.findall(r"^ +-(\w), --(\w+)=", out + err, flags=re.M))
        table = _short_flags(command)
        assert all(table[letter] == option for letter, option in shown.items()), (name, shown, table)
        assert name == "export" or shown, name  # the pattern still finds them
        assert "o" not in shown and table.get("o") in (None, "output", "output_dir")  # -o is output, never --overwrite
        assert "GROUP" not in out + err and "FIRE_METADATA" not in out + err, name  # Fire's own attribute is no sub-command
    code, _, err = run(capsys, "slice", str(tiny_dataset), "-o", str(tmp_path / "s"), "-i", "16", "-v=0.5")
    assert code == 0, err
    settings = json.loads((tmp_path / "s" / "dataset.json").read_text(encoding="utf-8"))["settings"]
    assert settings["image_size"] == 16 and settings["val_fraction"] == 0.5
    code, _, err = run(capsys, "synth", "-o", str(tmp_path / "c"), "-n", "0")
    assert code == 2 and "n_cases" in err and not (tmp_path / "c").exists()


def test_numeric_looking_paths_stay_strings(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_brats_case(tmp_path / "2010-10-10", "0012")
    code, _, err = run(capsys, "slice", "2010-10-10", "-o", "0013", "--image_size", "16")
    assert code == 0, err
    assert (tmp_path / "0013" / "images" / "0012.npy").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["slice", "{tmp}/nowhere", "-o", "{tmp}/o"], "nowhere: no such file or folder"),
        (["slice", "{data}", "-o", "{tmp}/o", "--modality", "t3"], "--modality must be one or more of flair, t1, t1ce, t2"),
        (["slice", "{data}", "-o", "{tmp}/o", "--modality", "t2"], "has no t2 file"),
        (["slice", "{data}", "-o", "{tmp}/o", "--bogus", "1"], "has no option --bogus (valid: --data_dir, --output"),
        (["slice", "{data}"], "slice needs an output folder: -o OUT_DIR"),
        (["slice", "{data}", "-o", "{tmp}/file.txt/sub"], "cannot create output folder"),
        (["slice", "{data}", "-o", "{tmp}/o", "--image_size", "abc"], "--image_size must be a whole number"),
        (["slice", "{data}", "-o", "{tmp}/o", "--seed", "-1"], "--seed must be >= 0, got -1"),  # was a numpy traceback
        (["synth", "{tmp}/c", "--n_cases", "0"], "--n_cases must be >= 1, got 0"),
        (["synth", "{tmp}/file.txt"], "output exists and is not a folder"),
        (["demo", "-o", "{data}"], "folder is not empty and holds no earlier demo"),  # never writes into the user's data
        (["demo", "-o", "{tmp}/file.txt"], "file.txt: is a file; the demo needs a folder"),
        (["demo", "--output_dir", "{data}"], "folder is not empty and holds no earlier demo"),  # the spelling, as for train
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(capsys, tiny_dataset, tmp_path, argv, message):
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    argv = [a.format(tmp=tmp_path, data=tiny_dataset) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("amecam: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "manifest.csv").exists()


def test_unknown_flag_is_rejected_before_any_work(capsys, tiny_dataset, tmp_path):
    code, _, _ = run(capsys, "slice", str(tiny_dataset), "-o", str(tmp_path / "o"), "--imagesize", "16")
    assert code == 2 and not (tmp_path / "o").exists()


def test_corrupt_volume_names_the_file(capsys, tiny_dataset, tmp_path):
    path = tiny_dataset / "CASE_01" / "CASE_01_flair.nii.gz"
    path.write_bytes(path.read_bytes()[:300])
    code, _, err = run(capsys, "slice", str(tiny_dataset), "-o", str(tmp_path / "o"))
    assert code == 2 and "CASE_01_flair.nii.gz: cannot read NIfTI volume" in err


def test_debug_shows_the_traceback(tmp_path):
    from amecam_cli.errors import AmecamError

    with pytest.raises(AmecamError):
        main(["slice", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"), "--debug"])


def test_2d_image_in_a_dataset(capsys, tmp_path):
    import numpy as np

    save_nifti(tmp_path / "d" / "X" / "X_flair.nii.gz", np.zeros((20, 20), np.int16))
    save_nifti(tmp_path / "d" / "X" / "X_seg.nii.gz", np.zeros((20, 20), np.uint8))
    code, _, err = run(capsys, "slice", str(tmp_path / "d"), "-o", str(tmp_path / "o"))
    assert code == 2 and "X_flair.nii.gz: volume is 2-D (shape 20x20)" in err


# ---- commands around a trained bundle ---------------------------------------------------------------

def test_infer_cam_crf_export_verify(capsys, tmp_path, tiny_bundle):
    import nibabel as nib
    import numpy as np

    from .conftest import planted_case

    image, _ = planted_case(seed=2)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(tiny_bundle),
                       "--save_cam", str(tmp_path / "c.nii.gz"), "--device", "cpu")
    assert code == 0, err
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(tiny_bundle))
    assert code == 2 and "already exists (pass --overwrite" in err
    code, _, err = run(capsys, "cam", str(src), "-o", str(tmp_path / "g.nii.gz"), "--bundle", str(tiny_bundle),
                       "--method", "gradcam", "--png_dir", str(tmp_path / "png"), "--device", "cpu")
    assert code == 0, err
    heat = np.asanyarray(nib.load(str(tmp_path / "g.nii.gz")).dataobj)
    assert heat.dtype == np.float32 and heat.shape == image.shape and 0 <= heat.min() and heat.max() <= 1
    assert (tmp_path / "png" / "p_flair_gradcam.png").is_file()
    montage = (tmp_path / "png" / "p_flair_gradcam.png").read_bytes()  # another map, same montage name: asked first
    code, _, err = run(capsys, "cam", str(src), "-o", str(tmp_path / "g2.nii.gz"), "--bundle", str(tiny_bundle),
                       "--method", "gradcam", "--png_dir", str(tmp_path / "png"), "--device", "cpu")
    assert code == 2 and "p_flair_gradcam.png: output already exists (pass --overwrite" in err
    assert not (tmp_path / "g2.nii.gz").exists() and (tmp_path / "png" / "p_flair_gradcam.png").read_bytes() == montage
    code, _, err = run(capsys, "cam", str(src), "-o", str(tmp_path / "x.nii.gz"), "--bundle", str(tiny_bundle), "--method", "gradcam2")
    assert code == 2 and "--method must be one of amecam, exit1" in err
    code, _, err = run(capsys, "crf", str(src), str(tmp_path / "c.nii.gz"), "-o", str(tmp_path / "crf.nii.gz"), "--threshold", "0.3")
    assert code == 0, err
    assert np.asanyarray(nib.load(str(tmp_path / "crf.nii.gz")).dataobj).dtype == np.uint8
    code, out, err = run(capsys, "export", str(tiny_bundle), "-o", str(tmp_path / "b_v0.2.0.zip"))
    assert code == 0, err
    # a Model Zoo name states the version: one that contradicts the bundle's is written, with a warning
    version = json.loads((tiny_bundle / "configs" / "metadata.json").read_text())["version"]
    assert f"the name says version 0.2.0 but the bundle is version {version}" in err
    code, out, err = run(capsys, "export", str(tiny_bundle), "-o", str(tmp_path / f"b_v{version}.zip"))
    assert code == 0 and "the name says" not in err, err
    code, out, err = run(capsys, "verify", str(tmp_path / "b_v0.2.0.zip"))
    assert code == 0, err + out
    assert out.count("PASS") >= 4 and "FAIL" not in out
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "z.nii.gz"), "--bundle", str(tmp_path / "b_v0.2.0.zip"))
    assert code == 0, err


def test_verify_prints_only_its_checks(tiny_bundle):
    # MONAI's verify_net_in_out logged 11 lines of its arguments to stdout, among the PASS rows (its handler
    # holds the stdout of the moment MONAI is imported, so only a fresh process shows them)
    import subprocess
    import sys

    code = "import sys; from amecam_cli.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "verify", str(tiny_bundle)], capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out
    rows = out.splitlines()
    assert len(rows) == 5 and all(row.startswith("PASS  ") for row in rows), out


def test_infer_into_a_new_folder_named_with_a_trailing_slash(capsys, tmp_path, tiny_bundle):
    """The command line must keep the slash of `-o masks/` (a Path drops it), or the folder is never meant."""
    image, _ = planted_case()
    src = save_nifti(tmp_path / "p_flair.nii.gz", image)
    code, _, err = run(capsys, "infer", str(src), "-o", f"{tmp_path}/masks/", "--bundle", str(tiny_bundle),
                       "--save_cam", f"{tmp_path}/maps/")
    assert code == 0, err
    assert (tmp_path / "masks" / "p_flair_mask.nii.gz").is_file() and (tmp_path / "maps" / "p_flair_cam.nii.gz").is_file()


def test_a_switch_never_takes_the_volume_and_false_means_false(capsys, tmp_path, tiny_bundle):
    from amecam_cli.cli import _commands, _translate_short_flags

    commands = _commands()
    assert _translate_short_flags(["infer", "--crf", "v.nii.gz", "-o", "m.nii.gz"], commands) == [
        "infer", "--crf=True", "v.nii.gz", "--output", "m.nii.gz"]
    assert _translate_short_flags(["infer", "v", "--overwrite", "no", "--nocrf", "-c=false"], commands) == [
        "infer", "v", "--overwrite=False", "--crf=False", "--crf=False"]
    assert _translate_short_flags(["train", "--skull_strip", "data"], commands) == ["train", "--skull_strip=True", "data"]  # bool | None
    assert _translate_short_flags(["infer", "--", "--crf", "-t"], commands) == ["infer", "--", "--crf", "-t"]  # Fire's own part
    image, _ = planted_case()
    src = save_nifti(tmp_path / "p_flair.nii.gz", image)
    (tmp_path / "m.nii.gz").write_bytes(b"keep me")
    for words in (["--overwrite=false"], ["--overwrite", "no"], ["--overwrite=False"]):  # 'false' and 'no' once replaced it
        code, _, err = run(capsys, "infer", "--crf", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(tiny_bundle), *words)
        assert code == 2 and "output already exists" in err, (words, err)
    assert (tmp_path / "m.nii.gz").read_bytes() == b"keep me"
    for words in (["--crf=maybe"], ["--crf", "maybe"]):  # the second once read as "--threshold must be a number"
        code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(tiny_bundle), *words)
        assert code == 2 and "--crf is a switch: give --crf or --nocrf (or --crf=true/false), got 'maybe'" in err, err
    # a decimal comma reaches the command as the tuple (0, 5): say how to write it
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m2.nii.gz"), "--bundle", str(tiny_bundle), "-t", "0,5")
    assert code == 2 and "--threshold must be a number, got 0,5 (write decimals with a point: 0.5)" in err, err
    assert not (tmp_path / "m2.nii.gz").exists()
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m2.nii.gz"), "--bundle", str(tiny_bundle), "-t", "0,05")
    assert code == 2 and "--threshold must be a number, got 0,05 (write decimals with a point: 0.05)" in err, err  # not a tuple
    # a whole number written as 1e3 or 2.0 reaches the command as a float: take it; 10.5 is refused as typed
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m3.nii.gz"), "--bundle", str(tiny_bundle), "--min_size", "1e3")
    assert code == 0 and "min_size" not in err, err
    assert [type(v) for v in (_int(1e3, "min_size"), _int(2.0, "epochs"))] == [int, int] and _int(1e3, "min_size") == 1000
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m4.nii.gz"), "--bundle", str(tiny_bundle), "--min_size", "10.5")
    assert code == 2 and "--min_size must be a whole number, got 10.5" in err and not (tmp_path / "m4.nii.gz").exists(), err
    # also for a bool | None switch, after a required argument given as a flag (it once became --modality)
    code, _, err = run(capsys, "train", "--data_dir", str(tmp_path), "-o", str(tmp_path / "run"), "--skull_strip", "maybe")
    assert code == 2 and "--skull_strip is a switch" in err and not (tmp_path / "run").exists(), err


def test_infer_warns_on_a_blank_volume(capsys, tmp_path, tiny_bundle):
    """A blank volume (a failed conversion, say) has no brain to segment: the empty mask it gets is
    written, and a warning line says why, instead of a plain "0.0 ml" that reads like a tumour-free scan."""
    import nibabel as nib

    src = save_nifti(tmp_path / "blank_flair.nii.gz", np.zeros((24, 24, 12), dtype=np.int16))
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "m.nii.gz"), "--bundle", str(tiny_bundle))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("amecam: warning:")]
    assert len(warnings) == 1 and "no slice has enough brain to segment" in warnings[0], err
    assert not np.asanyarray(nib.load(str(tmp_path / "m.nii.gz")).dataobj).any()
    image = np.zeros((24, 24, 12), dtype=np.int16)
    image[4:20, 4:20, :] = 100
    src = save_nifti(tmp_path / "head_flair.nii.gz", image)
    code, _, err = run(capsys, "infer", str(src), "-o", str(tmp_path / "h.nii.gz"), "--bundle", str(tiny_bundle))
    assert code == 0 and "warning" not in err, err


def test_overwrite_never_destroys_an_input_or_collides(capsys, tmp_path, tiny_bundle, monkeypatch):
    """--overwrite replaces earlier results, never the volume being read; a mask and a map never share a file."""
    from .conftest import planted_case

    monkeypatch.chdir(tmp_path)
    image, _ = planted_case(seed=2)
    src = save_nifti(tmp_path / "p_flair.nii.gz", image.astype(np.int16))
    before = src.read_bytes()
    cases = [
        (["infer", "p_flair.nii.gz", "-o", "./p_flair.nii.gz", "--bundle", str(tiny_bundle), "--overwrite"], "p_flair.nii.gz: this is one of the inputs"),
        (["infer", str(src), "-o", "m.nii.gz", "--save_cam", str(src), "--bundle", str(tiny_bundle), "--overwrite"], "this is one of the inputs"),
        (["infer", str(src), "-o", "m.nii.gz", "--save_cam", "./m.nii.gz", "--bundle", str(tiny_bundle)], "two results would be written to this one file"),
        (["cam", str(src), "-o", str(src), "--bundle", str(tiny_bundle), "--overwrite"], "this is one of the inputs"),
        (["crf", str(src), str(src), "-o", str(src), "--overwrite"], "this is one of the inputs"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        errors = [line for line in err.splitlines() if line.startswith("amecam: error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], (argv, err)
    assert src.read_bytes() == before
    assert not (tmp_path / "m.nii.gz").exists()


def test_a_stage_out_of_range_is_refused_whatever_the_method(capsys, tmp_path, tiny_bundle, tiny_dataset):
    """--stage 7 was refused with --method gradcam but taken silently with the default method (a typo for
    a gradient baseline's stage would go unnoticed until the row came out the same)."""
    src = tiny_dataset / "CASE_00" / "CASE_00_flair.nii.gz"
    for argv in (["cam", str(src), "-o", str(tmp_path / "c.nii.gz"), "--bundle", str(tiny_bundle), "--stage", "7"],
                 ["evaluate", str(tiny_dataset), "-o", str(tmp_path / "r"), "--bundle", str(tiny_bundle),
                  "--methods", "amecam", "--stage", "0"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "--stage must be 1, 2, 3 or 4" in err, (argv, err)
    assert not (tmp_path / "c.nii.gz").exists() and not (tmp_path / "r").exists()


def test_evaluate_writes_the_report(capsys, tmp_path, tiny_bundle, tiny_dataset):
    import json

    code, out, err = run(capsys, "evaluate", "--data_dir", str(tiny_dataset), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"),
                         "--methods", "amecam,gradcam,scorecam,exit1", "--crf", "--budget", "4", "--device", "cpu")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["modality"] == "flair" and report["n_cases"] == 6 and report["n_slices"] > 0
    assert set(report["methods"]) == {"amecam", "gradcam", "scorecam", "exit1", "amecam+crf", "gradcam+crf", "scorecam+crf", "exit1+crf"}
    for row in report["methods"].values():
        for level in ("slice", "volume"):
            assert {"dice", "dice_std", "iou", "hd95"} <= set(row[level])
            assert 0 <= row[level]["dice"] <= 1
    assert report["scorecam"]["forward_passes"] > 0
    for name in ("report.md", "per_slice.csv", "dice_boxplot.png", "qualitative.png"):
        assert (tmp_path / "r" / name).is_file()
    assert "| Grad-CAM |" in (tmp_path / "r" / "report.md").read_text(encoding="utf-8") and "| Grad-CAM |" in out
    # the test volumes' headers state no unit, so HD95 is not labelled mm
    assert report["distance_unit"] == "voxel-size units, unit not stated" and len(report["cases_without_spacing_unit"]) == 6
    assert "Slice HD95 (voxel-size units, unit not stated)" in out and "(mm)" not in out
    assert "6 of 6 cases have NIfTI headers that state no spatial unit" in (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    # these are the bundle's own cases (its training and validation split): said before the work and in the report
    split = json.loads((tiny_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]["split"]
    seen = report["cases_seen_in_training"]
    assert seen == {"train": sorted(c for c, r in split.items() if r == "train"), "val": sorted(c for c, r in split.items() if r == "val")}
    assert len(seen["train"]) + len(seen["val"]) == 6 and seen["train"] and seen["val"]
    warning = f"6 of 6 cases are the bundle's own cases, by id or by identical files ({len(seen['train'])} training, {len(seen['val'])} validation: "
    assert warning in err and "not held-out results" in err
    assert warning in (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    code, _, err = run(capsys, "evaluate", "--data_dir", str(tiny_dataset), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"))
    assert code == 2 and "report folder is not empty" in err
    code, _, err = run(capsys, "evaluate", "--data_dir", str(tiny_dataset), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r2"),
                       "--methods", "gradcam,best")
    assert code == 2 and "--methods must be one of" in err


def test_evaluate_resume_keeps_the_finished_cases(capsys, tmp_path, tiny_bundle, tiny_dataset, monkeypatch):
    """Ctrl-C during evaluate, then --resume: only the unfinished cases are scored, and the report is the same."""
    import amecam_cli.cases as cases_module

    common = ("--data_dir", str(tiny_dataset), "--bundle", str(tiny_bundle), "--methods", "amecam,exit1,threshold",
              "--crf", "--device", "cpu")
    assert run(capsys, "evaluate", *common, "-o", str(tmp_path / "whole"))[0] == 0
    load_case = cases_module.load_case
    loaded = []

    def interrupted_at_the_fourth(case):
        if len(loaded) == 3:
            raise KeyboardInterrupt
        loaded.append(case.case_id)
        return load_case(case)

    monkeypatch.setattr(cases_module, "load_case", interrupted_at_the_fourth)
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"))
    assert code == 130 and "--resume" in err and not (tmp_path / "r" / "report.json").exists()
    # another threshold cannot continue these cases; --overwrite and --resume contradict each other
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"), "--resume", "--threshold", "0.6")
    assert code == 2 and "threshold" in err and "--overwrite" in err
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"), "--resume", "--overwrite")
    assert code == 2 and "--resume" in err
    # cases kept by an amecam before 0.5.10 were scored with the old volume gating: not mixed with new ones
    state = tmp_path / "r" / ".resume" / "settings.json"
    kept = state.read_text(encoding="utf-8")
    state.write_text(json.dumps({k: v for k, v in json.loads(kept).items() if k != "scoring"}), encoding="utf-8")
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"), "--resume")
    assert code == 2 and "scoring null, now" in err and "--overwrite" in err
    state.write_text(kept, encoding="utf-8")
    loaded.clear()
    monkeypatch.setattr(cases_module, "load_case", lambda case: loaded.append(case.case_id) or load_case(case))
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"), "--resume")
    assert code == 0, err
    assert loaded == ["CASE_03", "CASE_04", "CASE_05"] and "3 of 6 case(s) kept" in err

    def results(folder):
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        return {k: report[k] for k in ("methods", "per_case", "n_slices", "classifier_slice_auc", "cases")}

    assert results(tmp_path / "r") == results(tmp_path / "whole")
    assert (tmp_path / "r" / "per_slice.csv").read_text() == (tmp_path / "whole" / "per_slice.csv").read_text()
    # a finished report resumes without scoring anything again; without --resume it is still refused
    loaded.clear()
    assert run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"), "--resume")[0] == 0 and loaded == []
    assert results(tmp_path / "r") == results(tmp_path / "whole")
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"))
    assert code == 2 and "--resume" in err and "--overwrite" in err


def test_evaluate_after_a_failed_first_case_runs_again_and_refuses_a_file(capsys, tmp_path, tiny_bundle, tiny_dataset, monkeypatch):
    data = tiny_dataset
    flair = data / "CASE_00" / "CASE_00_flair.nii.gz"
    good = flair.read_bytes()
    flair.write_bytes(good[:200])
    common = ("--data_dir", str(data), "--bundle", str(tiny_bundle), "--methods", "exit1", "--device", "cpu")
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"))
    assert code == 2 and "CASE_00_flair.nii.gz" in err
    flair.write_bytes(good)  # nothing was finished, so the same command simply runs
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r"))
    assert code == 0, err
    later = data / "CASE_02" / "CASE_02_flair.nii.gz"  # a bad file after two finished cases: they are kept, and it says so
    later_good = later.read_bytes()
    later.write_bytes(later_good[:200])
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r2"))
    assert code == 2 and "CASE_02_flair.nii.gz" in err and "the 2 case(s) before it are kept" in err and "--resume" in err
    later.write_bytes(later_good)
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "r2"), "--resume")
    assert code == 0 and "2 of 6 case(s) kept" in err, err
    import errno

    import amecam_cli.evaluation as evaluation

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation, "_save_case", disk_full)
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "full"))
    assert code == 2 and err.strip().endswith("cannot keep the results of case CASE_00 (No space left on device)")
    (tmp_path / "report.txt").write_text("mine")
    code, _, err = run(capsys, "evaluate", *common, "-o", str(tmp_path / "report.txt"))
    assert code == 2 and "is a file" in err and (tmp_path / "report.txt").read_text() == "mine"


def test_evaluate_scores_a_tumour_slice_the_brain_mask_misses(capsys, tmp_path, tiny_bundle):
    import json

    from .conftest import planted_case

    image, seg = planted_case(seed=3)
    image[:, :, 0] = 0  # no brain on slice 0, but the expert mask marks tumour there
    seg[10:18, 12:20, 0] = 2
    save_nifti(tmp_path / "d" / "C" / "C_flair.nii.gz", image.astype(np.int16))
    save_nifti(tmp_path / "d" / "C" / "C_seg.nii.gz", seg)
    code, _, err = run(capsys, "evaluate", "--data_dir", str(tmp_path / "d"), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"),
                       "--methods", "amecam,threshold", "--device", "cpu")
    assert code == 0, err
    with open(tmp_path / "r" / "per_slice.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "amecam"]
    assert [r["z"] for r in rows] == ["0", "4", "5", "6", "7"]  # slice 0 counted, with an empty map
    assert float(rows[0]["dice"]) == 0.0
    assert json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["n_slices"] == 5


def test_train_command_and_resume_flag(capsys, tmp_path, tiny_dataset):
    args = ["train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "run"), "--epochs", "1", "--attention_epochs", "1",
            "--image_size", "64", "--batch_size", "4", "--device", "cpu"]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert (tmp_path / "run" / "models" / "model.ts").is_file()
    code, _, err = run(capsys, *args)
    assert code == 2 and "pass --resume to continue that run or --overwrite" in err
    code, _, err = run(capsys, *args, "--resume")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "r2"), "--image_size", "50")
    assert code == 2 and "--image_size must be a multiple of 32 and >= 64" in err
    code, _, err = run(capsys, "train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "r3"), "--device", "tpu")
    assert code == 2 and "--device must be one of auto, cpu, cuda" in err


def test_train_from_slice_labels_only(capsys, tmp_path, tiny_dataset):
    """The researcher with volumes and a CSV of slice labels, no masks: amecam train --slice_labels."""
    import nibabel as nib

    lines = ["Case;Slice;Label"]  # as a spreadsheet saves it
    for folder in sorted(tiny_dataset.iterdir()):
        seg = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
        share = (seg > 0).mean(axis=(0, 1))
        lines += [f"{folder.name};{z};{'tumor' if share[z] > 0.01 else 'normal'}" for z in range(seg.shape[2]) if share[z] > 0.01 or share[z] == 0]
        (folder / f"{folder.name}_seg.nii.gz").unlink()
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    args = ["train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "run"), "--epochs", "1", "--attention_epochs", "1",
            "--image_size", "64", "--batch_size", "4", "--device", "cpu"]
    code, _, err = run(capsys, *args)
    assert code == 2 and "6 case(s) have no segmentation to derive slice labels from" in err and "--slice_labels" in err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
    (tmp_path / "normal.csv").write_text("\n".join(line for line in lines if "tumor" not in line) + "\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text(lines[0] + "\n", encoding="utf-8")
    for name, message in [("normal.csv", "labels 0 tumour and"), ("empty.csv", "holds no slice labels, only its header")]:
        code, _, err = run(capsys, *args, "--slice_labels", str(tmp_path / name))
        assert code == 2 and message in err and not (tmp_path / "run").exists(), err
    code, _, err = run(capsys, *args, "--slice_labels", str(tmp_path / "labels.csv"))
    assert code == 0, err
    settings = json.loads((tmp_path / "run" / "configs" / "amecam_train.json").read_text(encoding="utf-8"))
    assert settings["slice_labels"] == str(tmp_path / "labels.csv")
    card = (tmp_path / "run" / "docs" / "README.md").read_text(encoding="utf-8")
    assert "- Slice labels: from a CSV of slice labels (`labels.csv`), no masks." in card
    with open(tmp_path / "run" / "slices" / "manifest.csv", encoding="utf-8") as handle:
        labels = {(r["case"], int(r["slice"])): r["label"] for r in csv.DictReader(handle)}
    expected = {(c, int(z)): lab for c, z, lab in (line.split(";") for line in lines[1:])}
    assert {k: v for k, v in labels.items() if v != "unlabelled"} == {k: v for k, v in expected.items() if k in labels}
    assert "tumor" in labels.values() and "normal" in labels.values()
    code, _, err = run(capsys, "train", "--data_dir", str(tmp_path / "run" / "slices"), "-o", str(tmp_path / "r2"),
                       "--image_size", "64", "--slice_labels", str(tmp_path / "labels.csv"))
    assert code == 2 and "a slice dataset already holds its slice labels" in err
    # train-seg makes its pseudo-labels on the slices the CSV calls tumour: the bundle's CSV, or --slice_labels
    seg_args = ["train-seg", "--bundle", str(tmp_path / "run"), "--data_dir", str(tiny_dataset), "--epochs", "1",
                "--batch_size", "4", "--device", "cpu"]
    code, _, err = run(capsys, *seg_args, "-o", str(tmp_path / "seg"))
    assert code == 0, err
    with open(tmp_path / "seg" / "slices" / "manifest.csv", encoding="utf-8") as handle:
        assert {(r["case"], int(r["slice"])): r["label"] for r in csv.DictReader(handle)} == labels
    (tmp_path / "labels.csv").rename(tmp_path / "moved.csv")
    code, _, err = run(capsys, *seg_args, "-o", str(tmp_path / "seg2"))
    assert code == 2 and "the slice labels the AME-CAM bundle was trained with are not here" in err
    assert not (tmp_path / "seg2").exists()
    code, _, err = run(capsys, *seg_args, "-o", str(tmp_path / "seg2"), "--supervised")  # needs masks, not the CSV
    assert code == 2 and "6 case(s) have no segmentation" in err and not (tmp_path / "seg2").exists()
    code, _, err = run(capsys, *seg_args, "-o", str(tmp_path / "seg2"), "--slice_labels", str(tmp_path / "moved.csv"))
    assert code == 0, err


def test_a_runs_naming_pattern_serves_resume_and_train_seg(capsys, tmp_path, tiny_dataset):
    """One FLAIR file per patient needs --pattern; the run keeps it, so --resume and train-seg need not repeat it."""
    patients = tmp_path / "patients"
    patients.mkdir()
    for folder in sorted(tiny_dataset.iterdir()):
        (folder / f"{folder.name}_flair.nii.gz").rename(patients / f"{folder.name.lower()}.nii.gz")
        (folder / f"{folder.name}_seg.nii.gz").rename(patients / f"{folder.name.lower()}_seg.nii.gz")
    pattern = "flair={case}.nii.gz;label={case}_seg.nii.gz"
    args = ["--data_dir", str(patients), "-o", str(tmp_path / "run")]
    code, _, err = run(capsys, "train", *args, "--pattern", pattern, "--epochs", "1", "--attention_epochs", "1",
                       "--image_size", "64", "--batch_size", "4", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "configs" / "amecam_train.json").read_text(encoding="utf-8"))["pattern"] == pattern
    code, _, err = run(capsys, "train", *args, "--resume")
    assert code == 0 and "setting pattern = " in err and "already complete, skipped" in err, err
    code, _, err = run(capsys, "train", *args, "--resume", "--pattern", "flair={case}.nii.gz")
    assert code == 2 and "--pattern 'flair={case}.nii.gz' differs from the run being resumed" in err
    code, _, err = run(capsys, "train-seg", "--bundle", str(tmp_path / "run"), "--data_dir", str(patients), "-o", str(tmp_path / "seg"),
                       "--epochs", "1", "--batch_size", "4", "--device", "cpu")
    assert code == 0 and "(as the bundle's training data was named; --pattern gives another)" in err, err
    assert sorted({r["case"] for r in csv.DictReader(open(tmp_path / "seg" / "slices" / "manifest.csv", encoding="utf-8"))}) == \
        [f"case_{i:02d}" for i in range(6)]
    (tmp_path / "elsewhere").mkdir()  # other data, named otherwise: the inherited pattern is named in the error
    code, _, err = run(capsys, "train-seg", "--bundle", str(tmp_path / "run"), "--data_dir", str(tmp_path / "elsewhere"), "-o", str(tmp_path / "seg2"))
    assert code == 2 and "the bundle's training data was named 'flair={case}.nii.gz;label={case}_seg.nii.gz', which finds none" in err, err
    # infer and evaluate read a folder as the bundle's training data was named, too (one helper for all three)
    code, _, err = run(capsys, "infer", str(patients), "-o", str(tmp_path / "masks") + "/", "--bundle", str(tmp_path / "run"))
    assert code == 0 and "(as the bundle's training data was named; --pattern gives another)" in err, err
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"case_{i:02d}_mask.nii.gz" for i in range(6)]
    code, _, err = run(capsys, "evaluate", str(patients), "--bundle", str(tmp_path / "run"), "-o", str(tmp_path / "report"),
                       "--methods", "amecam")
    assert code == 0 and "(as the bundle's training data was named; --pattern gives another)" in err, err
    # data in the standard layout is still found when the bundle's pattern finds nothing there
    brats = tmp_path / "brats" / "p1"
    brats.mkdir(parents=True)
    shutil.copy(patients / "case_00.nii.gz", brats / "p1_flair.nii.gz")
    code, _, err = run(capsys, "infer", str(tmp_path / "brats"), "-o", str(tmp_path / "masks2") + "/", "--bundle", str(tmp_path / "run"))
    assert code == 0 and (tmp_path / "masks2" / "p1_mask.nii.gz").exists(), err
    code, _, err = run(capsys, "infer", str(tmp_path / "elsewhere"), "-o", str(tmp_path / "masks3") + "/", "--bundle", str(tmp_path / "run"))
    assert code == 2 and "found no cases with flair" in err and "the bundle's training data was named 'flair={case}.nii.gz;" in err, err
    (patients / "case_00_seg.nii.gz").unlink()  # evaluate needs masks: the error says which pattern looked for them
    code, _, err = run(capsys, "evaluate", str(patients), "--bundle", str(tmp_path / "run"), "-o", str(tmp_path / "report2"), "--methods", "amecam")
    assert code == 2 and "1 case(s) have no segmentation (label), e.g. case_00 (read as the bundle's training data was named, 'flair=" in err, err


def test_a_missing_gpu_is_refused_before_any_work(capsys, tmp_path, tiny_dataset, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, "train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "run"), "--device", "cuda")
    assert code == 2 and "--device: 'cuda' was asked for but CUDA is not available here (use cpu or auto)" in err
    assert "must be one of" not in err  # cuda is one of them: the problem is the machine, not the word
    assert not (tmp_path / "run").exists()  # nothing sliced, no run folder
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = run(capsys, "train", "--data_dir", str(tiny_dataset), "-o", str(tmp_path / "run"), "--device", "cuda:3")
    assert code == 2 and "'cuda:3' was asked for but this machine has 1 GPU(s) (cuda:0 to cuda:0)" in err
    assert not (tmp_path / "run").exists()


def test_crf_with_skull_strip_keeps_the_mask_off_the_scalp(capsys, tmp_path):
    import nibabel as nib

    from .test_preprocess import _head_with_scalp

    volume, _, scalp, lesion = _head_with_scalp(shape=(96, 96, 4))
    save_nifti(tmp_path / "img.nii.gz", volume)
    save_nifti(tmp_path / "cam.nii.gz", (volume > 50).astype(np.float32))  # the bright scalp is "tumour" in this map
    code, _, err = run(capsys, "crf", str(tmp_path / "img.nii.gz"), str(tmp_path / "cam.nii.gz"), "-o", str(tmp_path / "m.nii.gz"),
                       "--skull_strip")
    assert code == 0, err
    mask = nib.load(str(tmp_path / "m.nii.gz")).get_fdata() > 0
    assert not mask[scalp].any() and mask[lesion].any()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--bilateral_srgb", "0"], "--bilateral_srgb must be a number > 0, got 0.0"),  # killed the process (SIGSEGV in pydensecrf)
        (["--gaussian_sxy", "-1"], "--gaussian_sxy must be a number > 0, got -1.0"),
        (["--gaussian_compat", "nan"], "--gaussian_compat must be a number >= 0, got nan"),  # gave an empty mask
    ],
)
def test_crf_kernel_settings_are_checked_before_pydensecrf_sees_them(capsys, tmp_path, option, message):
    image, tumour = planted_case()
    save_nifti(tmp_path / "img.nii.gz", image)
    save_nifti(tmp_path / "cam.nii.gz", tumour.astype(np.float32))
    code, _, err = run(capsys, "crf", str(tmp_path / "img.nii.gz"), str(tmp_path / "cam.nii.gz"), "-o", str(tmp_path / "m.nii.gz"), *option)
    assert code == 2 and f"amecam: error: {message}" in err and not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize(
    ("name", "fusion", "label"),
    [
        ("amecam", "mean", "AME-CAM (mean of M1-M4 and Mf)"),
        ("amecam", None, "AME-CAM (mean of M1-M4 and Mf)"),  # reports from before bundle 0.5.0
        ("amecam+crf", "attention", "AME-CAM final map, fusion attention (Mf alone) + DenseCRF"),
        ("attention", "attention", "AME-CAM attention map Mf alone"),
        ("exit2+crf", "mean", "Exit 2 (M2) + DenseCRF"),
    ],
)
def test_report_labels_name_the_bundles_fusion(name, fusion, label):
    from amecam_cli.evaluation import method_label

    assert method_label(name, fusion=fusion) == label


def test_hd95_is_labelled_mm_only_when_every_file_says_so():
    from amecam_cli.evaluation import distance_unit, table_markdown

    assert distance_unit(0, 3) == "mm"
    assert distance_unit(1, 3) == "mm; some files state no unit"
    assert distance_unit(3, 3) == "voxel-size units, unit not stated"
    row = {"dice": 0.5, "dice_std": 0.1, "iou": 0.4, "iou_std": 0.1, "hd95": 3.0, "hd95_std": 1.0}
    report = {"methods": {"amecam": {"slice": row, "volume": row}}}
    assert "Slice HD95 (mm)" in table_markdown(report)  # a report written before the unit was recorded
    assert "Volume HD95 (mm; some files state no unit)" in table_markdown({**report, "distance_unit": distance_unit(1, 3)})


def test_ctrl_c_says_how_to_continue(capsys, monkeypatch, tmp_path):
    import amecam_cli.inference

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(amecam_cli.inference, "run_inference", interrupted)
    code, _, err = run(capsys, "infer", str(tmp_path), "-o", str(tmp_path / "masks/"), "--bundle", str(tmp_path))
    assert code == 130 and err.strip() == "amecam: interrupted; finished outputs are kept: the same command with --resume segments the rest"
    monkeypatch.setattr("amecam_cli.synth.synthesize_cohort", interrupted)
    code, _, err = run(capsys, "synth", str(tmp_path / "c"))
    assert code == 130 and err.strip().splitlines()[-1] == "amecam: interrupted"  # nothing to resume


def test_evaluate_knows_a_training_case_copied_under_another_id(capsys, tmp_path, tiny_bundle):
    """The not-held-out check once went by case id only: a training case copied into a test folder under
    a new name was scored as held out. The bundle keeps a digest of each training case's files."""
    import json

    meta = json.loads((tiny_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["amecam_training"]
    assert sorted(meta["fingerprints"]) == sorted(meta["split"]) and len(set(meta["fingerprints"].values())) == 6
    source = tiny_bundle.parent / "data" / "CASE_01"
    test = tmp_path / "test"
    (test / "NEW_A").mkdir(parents=True)
    for name in ("flair", "seg"):
        shutil.copy(source / f"CASE_01_{name}.nii.gz", test / "NEW_A" / f"NEW_A_{name}.nii.gz")
    write_brats_case(test, "NEW_B", seed=40)  # a case of its own
    code, _, err = run(capsys, "evaluate", str(test), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "r"), "--methods", "exit1",
                       "--device", "cpu")
    assert code == 0, err
    role = meta["split"]["CASE_01"]
    seen = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["cases_seen_in_training"]
    assert seen[role] == ["NEW_A (same files as CASE_01)"] and not seen["train" if role == "val" else "val"]
    assert "1 of 2 cases are the bundle's own cases, by id or by identical files" in err


def test_the_not_held_out_note_names_a_few_cases_and_counts_the_rest():
    from amecam_cli.evaluation import seen_note

    seen = {"train": [f"P{i:02d}" for i in range(58)], "val": ["V1", "V2"]}
    note = seen_note(seen, 80)
    assert note.startswith("60 of 80 cases are the bundle's own cases, by id or by identical files (58 training, 2 validation: P00, P01")
    assert note.endswith("P05 and 54 more, listed in report.json)") and "V1" not in note
