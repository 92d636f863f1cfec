"""cp.tl.split on the real HER2ST table: groups never cross sides, validation stays out of test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cpnn as cp
from cpnn._core import check_obs_mask
from cpnn._errors import CpnnError


@pytest.fixture(scope="module")
def table():
    return cp.datasets.her2st(images=False)["table"]


def _groups(fold, obs, role, col):
    return set(obs.loc[(fold == role).to_numpy(), col].astype(str))


def test_leave_one_patient_out(table):
    folds = cp.tl.split(table, by="patient")
    assert [f.name for f in folds] == ["patient=B", "patient=C"]
    for fold in folds:
        assert fold.index.equals(table.obs_names)
        assert set(fold.cat.categories) == {"train", "validation", "test"}
        train, test = _groups(fold, table.obs, "train", "patient"), _groups(fold, table.obs, "test", "patient")
        assert not train & test
        assert not _groups(fold, table.obs, "validation", "patient") & test
        assert fold.attrs["protocol"] == "LOPO (leave-one-patient-out)"
    # train on C -> test B4: the last C section validates
    b = folds[0]
    assert _groups(b, table.obs, "test", "section") == {"B4"}
    assert _groups(b, table.obs, "validation", "section") == {"C6"}
    assert _groups(b, table.obs, "train", "section") == {"C2", "C3", "C4", "C5"}


def test_single_training_section_holds_out_a_block(table):
    (fold,) = cp.tl.split(table, by="patient", test="C", validation_fraction=0.25)
    val = (fold == "validation").to_numpy()
    train = (fold == "train").to_numpy()
    n_b = int((table.obs["section"] == "B4").sum())
    assert val.sum() == round(0.25 * n_b)
    rows = table.obs["array_row"].to_numpy()
    assert rows[val].min() >= rows[train].max()  # one contiguous band, not scattered spots
    assert "spatial block" in fold.attrs["validation"][0]


def test_leave_one_section_out_labels_shared_patients(table):
    folds = cp.tl.split(table, by="section")
    assert len(folds) == 6
    tested = [next(iter(_groups(f, table.obs, "test", "section"))) for f in folds]
    assert sorted(tested) == ["B4", "C2", "C3", "C4", "C5", "C6"]
    labels = {f.name: f.attrs["protocol"] for f in folds}
    assert labels["section=C3"] == "LOSO (leave-one-section-out), same patient in train"
    assert labels["section=B4"] == "LOSO (leave-one-section-out)"
    for f in folds:
        assert not _groups(f, table.obs, "validation", "section") & _groups(f, table.obs, "test", "section")


def test_explicit_validation_and_errors(table):
    (fold,) = cp.tl.split(table, by="section", test="C3", validation=["C2"])
    assert _groups(fold, table.obs, "validation", "section") == {"C2"}
    (fold,) = cp.tl.split(table, by="section", test="C3", validation=None)
    assert not (fold == "validation").any()
    with pytest.raises(CpnnError, match="by='slide' is not in obs"):
        cp.tl.split(table, by="slide")
    with pytest.raises(CpnnError, match=r"test=\[.Z9.\].*valid groups"):
        cp.tl.split(table, by="section", test="Z9")
    with pytest.raises(CpnnError, match=r"validation=\[.C3.\].*choose from"):
        cp.tl.split(table, by="section", test="C3", validation="C3")
    with pytest.raises(CpnnError, match="single group"):
        cp.tl.split(table[table.obs["patient"] == "C"], by="patient")


def test_fold_series_selects_by_name_not_position(table):
    (fold,) = cp.tl.split(table, by="section", test="C3")
    shuffled = (fold == "test").sample(frac=1.0, random_state=0)
    mask = check_obs_mask(table, shuffled, argument="train")
    np.testing.assert_array_equal(mask, (table.obs["section"] == "C3").to_numpy())
    with pytest.raises(CpnnError, match="missing"):
        check_obs_mask(table, shuffled.iloc[1:], argument="train")
    assert isinstance(fold, pd.Series)
