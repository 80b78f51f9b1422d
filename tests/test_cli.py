"""The amecam command line, tested in-process through main()."""

from __future__ import annotations

import csv

import pytest

from amecam_cli import __version__
from amecam_cli.cli import main

from .conftest import save_nifti, write_brats_case


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0
    for command in ("synth", "slice"):
        assert command in out + err


@pytest.mark.parametrize("command", ["synth", "slice"])
def test_each_command_documents_its_arguments(capsys, command):
    code, out, err = run(capsys, command, "--help")
    text = out + err
    assert code == 0 and "--overwrite" in text and "Example: amecam" in text


def test_version(capsys):
    assert run(capsys, "--version")[:2] == (0, f"amecam {__version__}\n")


def test_slice_end_to_end_with_short_output_flag(capsys, tiny_dataset, tmp_path):
    code, _, err = run(capsys, "slice", str(tiny_dataset), "-o", str(tmp_path / "s"), "--modality", "flair,t1ce",
                       "--image_size", "16", "--seed", "0012")
    assert code == 0, err
    with open(tmp_path / "s" / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["case"] for r in rows} == {f"CASE_{i:02d}" for i in range(6)}


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
        (["synth", "{tmp}/c", "--n_cases", "0"], "--n_cases must be >= 1, got 0"),
        (["synth", "{tmp}/file.txt"], "output exists and is not a folder"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(capsys, tiny_dataset, tmp_path, argv, message):
    (tmp_path / "file.txt").write_text("x")
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
