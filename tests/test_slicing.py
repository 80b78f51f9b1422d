from __future__ import annotations

import csv
import json
import re

import nibabel as nib

import numpy as np
import pytest

from amecam_cli.cases import find_cases
from amecam_cli.errors import AmecamError
from amecam_cli.slicing import SliceSettings, label_slices, read_slice_labels, slice_dataset, split_cases, tumour_slice_indices

from .conftest import save_nifti, write_brats_case


def _manifest(folder):
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_slice_labels_on_a_planted_tumour():
    label = np.zeros((10, 10, 4), np.uint8)
    label[:, :, 1] = 0
    label[0:2, 0:1, 2] = 1  # 2 pixels = 0.02 of the slice
    label[0:1, 0:1, 3] = 1  # 1 pixel = 0.01: not above the threshold
    label[0:5, 0:5, 0] = 1  # 25 pixels
    labels, fractions = label_slices(label, [0, 1, 2, 3], min_tumor_fraction=0.01)
    assert labels == ["tumor", "normal", "tumor", "ambiguous"]
    assert fractions == pytest.approx([0.25, 0.0, 0.02, 0.01])
    labels, _ = label_slices(label, [3], min_tumor_fraction=0.01, ambiguous="normal")
    assert labels == ["normal"]
    labels, _ = label_slices(label, [2], min_tumor_fraction=0.05)
    assert labels == ["ambiguous"]
    # the slices the evaluation and the demo score: strictly above the share, only among the slices asked for
    assert tumour_slice_indices(label, range(4)) == [0, 2]
    assert tumour_slice_indices(label, [1, 2, 3]) == [2]
    assert tumour_slice_indices(label, range(4), min_tumor_fraction=0.05) == [0]


def test_split_is_by_case_seeded_and_stable():
    ids = [f"c{i}" for i in range(10)]
    split = split_cases(ids, val_fraction=0.2, seed=3)
    assert sorted(split) == sorted(ids)
    assert sum(v == "val" for v in split.values()) == 2
    assert split_cases(list(reversed(ids)), val_fraction=0.2, seed=3) == split  # order of discovery is irrelevant
    assert any(split_cases(ids, val_fraction=0.2, seed=s) != split for s in range(4, 9))
    assert sum(v == "val" for v in split_cases(ids[:2], val_fraction=0.1, seed=0).values()) == 1


def test_slice_dataset_writes_manifest_arrays_and_never_splits_a_case(tiny_dataset, tmp_path):
    cases = find_cases(tiny_dataset, "flair,t1ce")
    settings = SliceSettings(modalities=("flair", "t1ce"), image_size=24, val_fraction=0.34, seed=1)
    out = tmp_path / "slices"
    counts = slice_dataset(cases, out, settings, progress=False)
    rows = _manifest(out)
    assert counts["slices"] == len(rows) > 0
    splits_per_case = {}
    for row in rows:
        splits_per_case.setdefault(row["case"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_per_case.values())
    assert sum(s == {"val"} for s in splits_per_case.values()) == 2
    images = np.load(out / "images" / "CASE_00.npy")
    masks = np.load(out / "masks" / "CASE_00.npy")
    case_rows = [r for r in rows if r["case"] == "CASE_00"]
    assert images.shape == (len(case_rows), 2, 24, 24) and images.dtype == np.float16
    assert masks.shape == (len(case_rows), 24, 24)
    # planted tumour in voxel z 4..7 (z is axial and not flipped for LPS): labels follow the mask
    for row in case_rows:
        inside = 4 <= int(row["slice"]) < 8
        assert row["label"] == ("tumor" if inside else "normal"), row
        assert (masks[int(row["row"])].sum() > 0) == inside
    assert float(case_rows[0]["brain_fraction"]) > 0
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["settings"]["modalities"] == ["flair", "t1ce"] and info["split"]["CASE_00"] in ("train", "val")


def test_rerun_resumes_and_refuses_other_settings(tiny_dataset, tmp_path):
    cases = find_cases(tiny_dataset, "flair")
    settings = SliceSettings(modalities=("flair",), image_size=16)
    out = tmp_path / "slices"
    slice_dataset(cases, out, settings, progress=False)
    (out / "cases" / "CASE_03.json").unlink()  # as if interrupted while slicing CASE_03
    stamp = (out / "images" / "CASE_01.npy").stat().st_mtime_ns
    counts = slice_dataset(cases, out, settings, progress=False)
    assert counts["reused_cases"] == 5
    assert (out / "images" / "CASE_01.npy").stat().st_mtime_ns == stamp
    assert len(_manifest(out)) == counts["slices"]
    with pytest.raises(AmecamError, match="other settings \\(image_size\\)"):
        slice_dataset(cases, out, SliceSettings(modalities=("flair",), image_size=32), progress=False)
    slice_dataset(cases, out, SliceSettings(modalities=("flair",), image_size=32), overwrite=True, progress=False)
    assert np.load(out / "images" / "CASE_01.npy").shape[-1] == 32


def test_bad_case_stops_with_one_error_and_leaves_no_partial_files(tiny_dataset, tmp_path):
    bad = np.ones((32, 32, 12), np.float32)
    bad[3, 3, 3] = np.nan
    save_nifti(tiny_dataset / "CASE_02" / "CASE_02_flair.nii.gz", bad)
    cases = find_cases(tiny_dataset, "flair")
    out = tmp_path / "slices"
    with pytest.raises(AmecamError, match="CASE_02_flair.nii.gz: volume contains 1 NaN"):
        slice_dataset(cases, out, SliceSettings(modalities=("flair",), image_size=16), progress=False)
    written = sorted(p.name for p in (out / "images").iterdir())
    assert written == ["CASE_00.npy", "CASE_01.npy"]  # complete cases only, nothing half-written
    assert not list(out.rglob(".*tmp*"))


def test_slice_labels_from_csv_without_masks(tmp_path):
    root = tmp_path / "data"
    write_brats_case(root, "P1")
    (root / "P1" / "P1_seg.nii.gz").unlink()
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("case,slice,label\nP1,5,tumor\nP1,6,1\nP1,2,normal\n", encoding="utf-8")
    cases = find_cases(root, "flair", require_label=False)
    slice_dataset(cases, tmp_path / "out", SliceSettings(modalities=("flair",), image_size=16),
                  slice_labels=read_slice_labels(labels_csv), progress=False)
    rows = {int(r["slice"]): r["label"] for r in _manifest(tmp_path / "out")}
    assert rows[5] == rows[6] == "tumor" and rows[2] == "normal" and rows[3] == "unlabelled"
    assert not (tmp_path / "out" / "masks" / "P1.npy").exists()
    labels_csv.write_text("case,slice,label\nP1,5,maybe\n", encoding="utf-8")
    with pytest.raises(AmecamError, match="line 2: label must be tumor/normal or 1/0, got 'maybe'"):
        read_slice_labels(labels_csv)


def test_slice_label_csv_as_spreadsheets_save_it(tmp_path):
    """Excel's 'CSV UTF-8' starts with a byte-order mark; headers may be capitalised; ; and tab separate too."""
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffCase ; Slice ; Label\n P1 ; 5 ; Tumour\nP1;6;0\n\nP2;3.0;1\n".encode("utf-8"))
    assert read_slice_labels(path) == {"P1": {5: "tumor", 6: "normal"}, "P2": {3: "tumor"}}
    path.write_text("case\tslice\tlabel\nP1\t5\ttumor\nP1\t5\ttumor\n", encoding="utf-8")  # a repeat that agrees is fine
    assert read_slice_labels(path) == {"P1": {5: "tumor"}}
    for text, message in [
        ("case,slice,label\nP1,5,tumor\nP1,5,normal\n", "line 3: slice 5 of case P1 is labelled normal here and tumor on line 2"),
        ("case,slice,label\nP1,-1,tumor\n", "line 2: slice must be a whole number >= 0, got '-1'"),
        ("case,slice,label\nP1,2.5,tumor\n", "line 2: slice must be a whole number >= 0, got '2.5'"),
        ("case,slice,label\n,5,tumor\n", "line 2: no case id"),
        ("patient,z,label\nP1,5,tumor\n", "needs the columns case, slice, label (found patient, z, label)"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(AmecamError, match=re.escape(message)):
            read_slice_labels(path)
    path.write_bytes("case,slice,label\nPatient_\xe9,5,tumor\n".encode("latin-1"))
    with pytest.raises(AmecamError, match="not UTF-8 text"):
        read_slice_labels(path)


def test_slice_labels_are_checked_against_the_cases(tmp_path, caplog):
    root = tmp_path / "data"
    for case in ("P1", "P2"):
        write_brats_case(root, case)  # with segmentations: the CSV's labels are used instead of them
    cases = find_cases(root, "flair", require_label=False)
    settings = SliceSettings(modalities=("flair",), image_size=16)
    with pytest.raises(AmecamError, match=re.escape("slice labels name case(s) not in the data: P3 (the data's cases: P1, P2)")):
        slice_dataset(cases, tmp_path / "a", settings, slice_labels={"P1": {5: "tumor"}, "P3": {5: "tumor"}}, progress=False)
    depth = nib.load(root / "P1" / "P1_flair.nii.gz").shape[2]
    with pytest.raises(AmecamError, match=f"case P1: slice {depth} is labelled, but the volume has {depth} slices"):
        slice_dataset(cases, tmp_path / "b", settings, slice_labels={"P1": {depth: "tumor"}}, progress=False)
    with caplog.at_level("WARNING"):
        slice_dataset(cases, tmp_path / "c", settings, slice_labels={"P1": {2: "tumor", 5: "normal"}}, progress=False)
    assert "1 case(s) have no slice labels and add nothing to training: P2" in caplog.text
    rows = {(r["case"], int(r["slice"])): r["label"] for r in _manifest(tmp_path / "c")}
    assert rows[("P1", 2)] == "tumor" and rows[("P1", 5)] == "normal"  # the CSV, not the segmentation
    assert {label for (case, _), label in rows.items() if case == "P2"} == {"unlabelled"}
    # a rerun into the same folder reuses its cases only when their labels come from the same place
    with pytest.raises(AmecamError, match="holds slices labelled from slice labels with digest [0-9a-f]{12}, not from segmentations"):
        slice_dataset(cases, tmp_path / "c", settings, progress=False)
    with pytest.raises(AmecamError, match="not from slice labels with digest"):
        slice_dataset(cases, tmp_path / "c", settings, slice_labels={"P1": {2: "normal", 5: "normal"}}, progress=False)
    assert slice_dataset(cases, tmp_path / "c", settings, slice_labels={"P1": {2: "tumor", 5: "normal"}}, progress=False)["reused_cases"] == 2


def test_bad_settings_name_the_option():
    with pytest.raises(AmecamError, match="--ambiguous must be one of exclude, normal, tumor, got 'drop'"):
        SliceSettings(modalities=("flair",), ambiguous="drop")
    with pytest.raises(AmecamError, match="--image_size must be a whole number in \\[16, 1024\\]"):
        SliceSettings(modalities=("flair",), image_size=8)


def test_workers_make_the_same_dataset_and_name_a_bad_case(tiny_dataset, tmp_path):
    cases = find_cases(tiny_dataset, "flair,t1ce")
    settings = SliceSettings(modalities=("flair", "t1ce"), image_size=16, val_fraction=0.34, seed=1)
    slice_dataset(cases, tmp_path / "one", settings, progress=False)
    counts = slice_dataset(cases, tmp_path / "two", settings, progress=False, workers=2)
    assert _manifest(tmp_path / "two") == _manifest(tmp_path / "one") and counts["slices"] == len(_manifest(tmp_path / "one"))
    for name in ("images/CASE_00.npy", "masks/CASE_05.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name))
    with pytest.raises(AmecamError, match="--workers must be a whole number >= 1"):
        slice_dataset(cases, tmp_path / "three", settings, progress=False, workers=0)
    bad = np.ones((32, 32, 12), np.float32)
    bad[3, 3, 3] = np.nan
    save_nifti(tiny_dataset / "CASE_02" / "CASE_02_flair.nii.gz", bad)
    with pytest.raises(AmecamError, match="CASE_02_flair.nii.gz: volume contains 1 NaN"):
        slice_dataset(cases, tmp_path / "four", settings, progress=False, workers=2)
    assert "CASE_02.npy" not in [p.name for p in (tmp_path / "four" / "images").iterdir()]
    assert not list((tmp_path / "four").rglob(".*tmp*"))
