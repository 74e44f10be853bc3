"""Class-balanced train / hold-out subsets (htakl_jax.data.subsets) and runs.load_data."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

from htakl_jax import config_validation, data, runs
from htakl_jax.data.subsets import balanced_split, per_class_counts

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _labels(per_class: list[int], seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


def test_per_class_counts_spread_the_remainder_over_the_first_classes():
    np.testing.assert_array_equal(per_class_counts(23, 5), [5, 5, 5, 4, 4])
    np.testing.assert_array_equal(per_class_counts(0, 3), [0, 0, 0])


def test_split_is_disjoint_balanced_and_deterministic():
    labels = _labels([30, 25, 40])
    tr, va = balanced_split(labels, 3, train_examples=30, validation_examples=6, seed=1)
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(np.bincount(labels[tr], minlength=3), [10, 10, 10])
    np.testing.assert_array_equal(np.bincount(labels[va], minlength=3), [2, 2, 2])
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    tr2, va2 = balanced_split(labels, 3, train_examples=30, validation_examples=6, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    tr3, _ = balanced_split(labels, 3, train_examples=30, validation_examples=6, seed=2)
    assert not np.array_equal(tr, tr3)


def test_hold_out_does_not_depend_on_the_training_subset_size():
    labels = _labels([50, 50])
    _, va_small = balanced_split(labels, 2, train_examples=10, validation_examples=8, seed=0)
    tr_all, va_all = balanced_split(labels, 2, train_examples=0, validation_examples=8, seed=0)
    np.testing.assert_array_equal(va_small, va_all)
    # train_examples = 0: every example not held out.
    assert len(tr_all) == 92 and not set(tr_all) & set(va_all)
    tr_small, _ = balanced_split(labels, 2, train_examples=10, validation_examples=8, seed=0)
    assert set(tr_small) <= set(tr_all)


@pytest.mark.parametrize(
    "train_examples, validation_examples, match",
    [(80, 0, "class 1 has 20 examples"), (0, 50, "class 1 has 20"), (-1, 0, "train_examples")],
)
def test_split_errors_name_the_class_and_sizes(train_examples, validation_examples, match):
    with pytest.raises(ValueError, match=match):
        balanced_split(
            _labels([60, 20]),
            2,
            train_examples=train_examples,
            validation_examples=validation_examples,
            seed=0,
        )


def _digits_config(**data_overrides):
    config = runpy.run_path(str(CONFIGS / "quickstart.py"))["get_config"]()
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def test_load_data_trains_on_the_subset_and_evaluates_on_the_hold_out():
    full_images, full_labels, _ = data.load_split("digits", "train")
    config = _digits_config(train_examples=200, validation_examples=100, eval_on_validation=True)
    train_ds, eval_ds, info = runs.load_data(config)
    assert info.num_classes == 10 and len(train_ds) == 200 and len(eval_ds) == 100
    np.testing.assert_array_equal(np.bincount(train_ds.labels, minlength=10), [20] * 10)
    np.testing.assert_array_equal(np.bincount(eval_ds.labels, minlength=10), [10] * 10)
    # Both are drawn from the train split by the subset seed, disjointly.
    tr, va = balanced_split(
        full_labels, 10, train_examples=200, validation_examples=100, seed=config.data.subset_seed
    )
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(train_ds.images, full_images[tr])
    np.testing.assert_array_equal(eval_ds.images, full_images[va])


def test_load_data_without_eval_on_validation_uses_the_test_split():
    _, test_labels, _ = data.load_split("digits", "test")
    train_ds, eval_ds, _ = runs.load_data(_digits_config(validation_examples=100))
    np.testing.assert_array_equal(eval_ds.labels, test_labels)
    full = len(data.load_split("digits", "train")[1])
    assert len(train_ds) == full - 100  # the hold-out is never trained on


def test_teacher_trains_on_its_own_subset_with_the_same_hold_out():
    full_images, full_labels, _ = data.load_split("digits", "train")
    config = _digits_config(train_examples=200, teacher_train_examples=0, validation_examples=100)
    student_ds, _, _ = runs.load_data(config)
    teacher_ds, _, _ = runs.load_data(config, phase="teacher")
    _, val = balanced_split(full_labels, 10, train_examples=0, validation_examples=100, seed=0)
    assert len(student_ds) == 200 and len(teacher_ds) == len(full_labels) - 100
    # The student's subset lies inside the teacher's; neither touches the hold-out.
    rows = {row.tobytes() for row in teacher_ds.images}
    assert all(row.tobytes() in rows for row in student_ds.images)
    assert not any(row.tobytes() in rows for row in full_images[val])
    config.data.teacher_train_examples = None  # the default: the student's subset
    np.testing.assert_array_equal(
        runs.load_data(config, phase="teacher")[0].labels, student_ds.labels
    )
    config.data.teacher_train_examples = len(full_labels)
    with pytest.raises(ValueError, match="data.teacher_train_examples"):
        runs.load_data(config, phase="teacher")


def test_eval_on_validation_needs_a_hold_out():
    config = _digits_config(eval_on_validation=True)
    with pytest.raises(ValueError, match="data.eval_on_validation"):
        config_validation.check_values(config, num_devices=1)
