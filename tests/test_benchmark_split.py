"""benchmarks/common.py's split by patient: the LGG cross-validation tests every patient once."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_folds_of_one_seed_test_every_case_once(common):
    cases = [SimpleNamespace(case_id=f"p{i:02d}") for i in range(80)]
    tested = []
    for fold in range(4):
        train, test = common.split_by_case(cases, 20, 0, fold)
        names = {c.case_id for c in test}
        assert len(names) == 20 and not names & {c.case_id for c in train} and len(train) == 60
        tested += names
    assert sorted(tested) == sorted(c.case_id for c in cases)
    assert common.split_by_case(cases, 20, 0, 0) == common.split_by_case(cases, 20, 0)  # fold 0 is the plain split
    assert common.split_by_case(cases, 20, 1, 0) != common.split_by_case(cases, 20, 0, 0)
    with pytest.raises(SystemExit, match="--fold must be 0 to 3"):
        common.split_by_case(cases, 20, 0, 4)
