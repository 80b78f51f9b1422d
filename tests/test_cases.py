from __future__ import annotations

import json

import numpy as np
import pytest

from amecam_cli.cases import find_cases, load_case, parse_modalities
from amecam_cli.errors import AmecamError

from .conftest import LPS, planted_case, save_nifti, shared_data, write_brats_case


@pytest.mark.parametrize(
    ("value", "expected"),
    [("flair", ("flair",)), ("flair,t1ce", ("flair", "t1ce")), (("T2", "t1"), ("t2", "t1")), (" flair , t1 ", ("flair", "t1"))],
)
def test_parse_modalities(value, expected):
    assert parse_modalities(value) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [("t3", "must be one or more of flair, t1, t1ce, t2.*got 't3'"), ("", "at least one"), ("flair,flair", "twice")],
)
def test_parse_modalities_rejects(value, match):
    with pytest.raises(AmecamError, match=match):
        parse_modalities(value)


def test_brats2021_layout_with_a_subset_of_modalities(tmp_path):
    for case in ("B_002", "B_001"):
        write_brats_case(tmp_path, case, modalities=("flair",))
    cases = find_cases(tmp_path, "flair")
    assert [c.case_id for c in cases] == ["B_001", "B_002"]
    assert cases[0].images["flair"].name == "B_001_flair.nii.gz"
    assert cases[0].label.name == "B_001_seg.nii.gz"
    with pytest.raises(AmecamError, match="B_001 has no t1ce file .*B_001_t1ce.nii.gz; it has flair"):
        find_cases(tmp_path, "flair,t1ce")


def test_brats2023_layout_maps_names(tmp_path):
    names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    write_brats_case(tmp_path, "BraTS-GLI-00000-000", modalities=tuple(names), sep="-", names=names)
    (case,) = find_cases(tmp_path, "t1ce,flair")
    assert case.images["t1ce"].name == "BraTS-GLI-00000-000-t1c.nii.gz"
    assert case.images["flair"].name == "BraTS-GLI-00000-000-t2f.nii.gz"
    assert case.label.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_a_single_case_folder_is_a_dataset_of_one(tmp_path):
    folder = write_brats_case(tmp_path, "ONE", modalities=("flair",))
    assert [c.case_id for c in find_cases(folder, "flair")] == ["ONE"]


def test_datalist_json_with_relative_paths(tmp_path):
    image, seg = planted_case()
    save_nifti(tmp_path / "imgs" / "p1_F.nii.gz", image)
    save_nifti(tmp_path / "imgs" / "p1_L.nii.gz", seg)
    save_nifti(tmp_path / "imgs" / "p2_F.nii.gz", image)
    datalist = {"training": [{"case": "p1", "flair": "imgs/p1_F.nii.gz", "label": "imgs/p1_L.nii.gz"}],
                "testing": [{"image": "imgs/p2_F.nii.gz"}]}
    (tmp_path / "list.json").write_text(json.dumps(datalist), encoding="utf-8")
    cases = find_cases(tmp_path / "list.json", "flair", require_label=False)
    assert [c.case_id for c in cases] == ["p1", "p2_F"]
    assert cases[0].label == tmp_path / "imgs" / "p1_L.nii.gz" and cases[1].label is None
    with pytest.raises(AmecamError, match="have no segmentation"):
        find_cases(tmp_path / "list.json", "flair")
    (tmp_path / "bad.json").write_text(json.dumps([{"case": "x", "flair": "nope.nii.gz"}]), encoding="utf-8")
    with pytest.raises(AmecamError, match="entry 0: .*nope.nii.gz: no such file"):
        find_cases(tmp_path / "bad.json", "flair")
    (tmp_path / "multi.json").write_text(json.dumps([{"image": ["imgs/p2_F.nii.gz", "imgs/p2_F.nii.gz"]}]), encoding="utf-8")
    with pytest.raises(AmecamError, match=r"entry 0: no 'flair' file \(keys: image\); a flair\+t1ce bundle reads one key per modality"):
        find_cases(tmp_path / "multi.json", "flair,t1ce", require_label=False)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AmecamError, match="cannot read datalist JSON"):
        find_cases(tmp_path / "broken.json", "flair")


@pytest.mark.parametrize(
    "pattern",
    ["{case}/{case}_{modality}.nii.gz", "flair={case}/{case}_flair.nii.gz;label={case}/{case}_seg.nii.gz",
     {"flair": "{case}/{case}_flair.nii.gz", "seg": "{case}/{case}_seg.nii.gz"}],
)
def test_naming_pattern(tmp_path, pattern):
    for case in ("0012", "0003"):
        write_brats_case(tmp_path, case, modalities=("flair",))
    cases = find_cases(tmp_path, "flair", pattern=pattern)
    assert [c.case_id for c in cases] == ["0003", "0012"]  # ids stay strings, leading zeros kept
    assert cases[1].label.name == "0012_seg.nii.gz"


def test_pattern_errors(tmp_path):
    with pytest.raises(AmecamError, match=r"must contain \{modality\}"):
        find_cases(tmp_path, "flair", pattern="{case}/x.nii.gz")
    with pytest.raises(AmecamError, match="no template for 't1'"):
        find_cases(tmp_path, "flair,t1", pattern="flair={case}/f.nii.gz")


def test_a_folder_of_loose_volumes_is_told_the_pattern_that_reads_it(tmp_path):
    import re

    image, seg = planted_case()
    for case in ("pA", "pB"):
        save_nifti(tmp_path / f"{case}_flair.nii.gz", image)
        save_nifti(tmp_path / f"{case}_t1ce.nii.gz", image)
        save_nifti(tmp_path / f"{case}_seg.nii.gz", seg)
    with pytest.raises(AmecamError, match=r"found no cases .*holds 6 volume file\(s\) directly, e.g. pA_flair.nii.gz: "
                                          r"for files named <case>_flair.nii.gz, <case>_t1ce.nii.gz, <case>_seg.nii.gz") as raised:
        find_cases(tmp_path, "flair,t1ce")
    hint = re.search(r'--pattern "([^"]+)"', str(raised.value)).group(1)
    cases = find_cases(tmp_path, "flair,t1ce", pattern=hint)  # the hint works, labels included
    assert [c.case_id for c in cases] == ["pA", "pB"] and all(c.label is not None for c in cases)
    patients = tmp_path / "patients"  # one FLAIR volume per patient, no modality in the name
    for case in ("anna", "ben"):
        save_nifti(patients / f"{case}.nii.gz", image)
    with pytest.raises(AmecamError, match=r"holds 2 volume file\(s\) directly, e.g. anna.nii.gz: for one flair volume per file") as raised:
        find_cases(patients, "flair")
    hint = re.search(r'--pattern "([^"]+)"', str(raised.value)).group(1)
    assert [c.case_id for c in find_cases(patients, "flair", pattern=hint, require_label=False)] == ["anna", "ben"]
    save_nifti(patients / "anna_seg.nii.gz", seg)  # a mask beside its volume is its label, not a third patient
    with pytest.raises(AmecamError, match=r'pass --pattern "flair=\{case\}.nii.gz;label=\{case\}_seg.nii.gz"') as raised:
        find_cases(patients, "flair")
    hint = re.search(r'--pattern "([^"]+)"', str(raised.value)).group(1)
    cases = find_cases(patients, "flair", pattern=hint, require_label=False)
    assert [(c.case_id, c.label is not None) for c in cases] == [("anna", True), ("ben", False)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmecamError, match=r"found no cases with flair \(expected [^;]*\)$"):  # no loose volumes, no hint
        find_cases(tmp_path / "empty", "flair")


def test_load_case_rejects_mismatched_shapes_and_grids(tmp_path):
    image, seg = planted_case(shape=(32, 32, 12))
    save_nifti(tmp_path / "C" / "C_flair.nii.gz", image)
    save_nifti(tmp_path / "C" / "C_t1.nii.gz", image[:, :, :10])
    save_nifti(tmp_path / "C" / "C_seg.nii.gz", seg[:, :30])
    (case,) = find_cases(tmp_path, "flair")
    with pytest.raises(AmecamError, match="C_seg.nii.gz: segmentation has shape 32x30x12 but C_flair.nii.gz has 32x32x12"):
        load_case(case)
    (case,) = find_cases(tmp_path, "flair,t1")
    with pytest.raises(AmecamError, match="C_t1.nii.gz: modality t1 has shape 32x32x10"):
        load_case(case)
    shifted = LPS.copy()
    shifted[0, 3] = 40.0
    save_nifti(tmp_path / "C" / "C_seg.nii.gz", seg, shifted)
    (case,) = find_cases(tmp_path, "flair")
    with pytest.raises(AmecamError, match="segmentation is not on the same voxel grid"):
        load_case(case)


def test_load_case_is_canonical_and_whole_tumour(tmp_path):
    write_brats_case(tmp_path, "W", modalities=("flair", "t2"))
    (case,) = find_cases(tmp_path, "t2,flair")
    loaded = load_case(case)
    assert loaded.channels.shape == (2, 32, 32, 12)
    assert set(np.unique(loaded.label)) == {0, 1}  # label 2 became whole tumour 1
    raw_seg = planted_case()[1]
    np.testing.assert_array_equal(loaded.label, (raw_seg[::-1, ::-1, :] > 0))  # LPS -> RAS


# ---- the real folders in ../shared/data ----------------------------------------------------------

def test_real_lgg_flair_folder_as_it_is():
    root = shared_data("lgg-flair")
    cases = find_cases(root, "flair")
    assert len(cases) == 80
    loaded = load_case(cases[0])
    assert loaded.channels.shape[0] == 1 and loaded.channels.shape[1:3] == (256, 256)
    assert loaded.label.max() == 1


def test_real_brats2021_case_all_modalities():
    root = shared_data("brats2021")
    (case,) = find_cases(root, "flair,t1,t1ce,t2")
    loaded = load_case(case)
    assert loaded.channels.shape == (4, 240, 240, 155)
    assert loaded.label.sum() > 10000  # whole tumour = labels 1, 2 and 4


def test_real_brats2013_by_pattern_and_by_datalist(tmp_path):
    root = shared_data("brats2013")
    pattern = "flair={case}/Flair_subtrMeanDivStd.nii.gz;t1ce={case}/T1c_subtrMeanDivStd.nii.gz;label={case}/OTMultiClass.nii.gz;brainmask={case}/brainmask.nii.gz"
    cases = find_cases(root, "flair,t1ce", pattern=pattern)
    assert len(cases) == 6 and cases[0].brainmask is not None
    entries = [{"case": c.case_id, "flair": str(c.images["flair"]), "label": str(c.label)} for c in cases]
    (tmp_path / "brats2013.json").write_text(json.dumps({"training": entries}), encoding="utf-8")
    via_list = find_cases(tmp_path / "brats2013.json", "flair")
    assert [c.case_id for c in via_list] == [c.case_id for c in cases]
    loaded = load_case(via_list[0])
    assert loaded.channels.dtype == np.float32 and loaded.channels.min() < 0  # z-scored input
    assert loaded.label.max() == 1
