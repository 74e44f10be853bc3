"""The CIFAR on-ramp: the official python tarballs read as downloaded, and tensorflow-datasets data
found through $TFDS_DATA_DIR, in TFRecord or ArrayRecord, or downloaded on request. Offline: small
generated archives and tfds metadata, tfds's own mocks."""

from __future__ import annotations

import os
import pickle
import re
import tarfile
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from htakl_jax import data
from htakl_jax.data import tfds_source

# --------------------------------------------------------------------------- fake CIFAR releases

# source -> (folder, archive, {file: number of rows}, label key, meta file, names key, classes)
RELEASES = {
    "cifar10_pickle": (
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        {**{f"data_batch_{i}": 2 for i in range(1, 6)}, "test_batch": 3},
        b"labels",
        "batches.meta",
        b"label_names",
        10,
    ),
    "cifar100_pickle": (
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        {"train": 4, "test": 2},
        b"fine_labels",
        "meta",
        b"fine_label_names",
        100,
    ),
}


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _write_release(parent: Path, source: str) -> Path:
    """The unpacked folder of a small fake release (official keys; rows are uint8 [N, 3072],
    R, G, B planes of 32x32), under `parent`."""
    folder, _, files, label_key, meta_file, names_key, classes = RELEASES[source]
    root = parent / folder
    rng = np.random.default_rng(len(source))
    for name, n in files.items():
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, classes, n)],
        }
        if source == "cifar100_pickle":
            batch[b"coarse_labels"] = [0] * n
        _write_pickle(root / name, batch)
    names = [f"class{i}".encode() for i in range(classes)]
    _write_pickle(root / meta_file, {names_key: names, b"num_cases_per_batch": 2})
    return root


def _write_tarball(root: Path, archive: Path, skip: tuple[str, ...] = ()) -> Path:
    """`root` packed as the official archives are (members `<folder>/<file>`), in reverse name
    order (the official member order is not sorted either)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name, recursive=False)
        for f in sorted(root.iterdir(), reverse=True):
            if f.name not in skip:
                tar.add(f, arcname=f"{root.name}/{f.name}")
    return archive


class _RunsCode:
    """Unpickling this calls os.system: what a crafted data file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- tarballs


@pytest.mark.parametrize("source", sorted(RELEASES))
def test_tarball_loads_like_the_unpacked_folder(tmp_path, source):
    folder = _write_release(tmp_path / "unpacked", source)
    archive_name = RELEASES[source][1]
    archive = _write_tarball(folder, tmp_path / "packed" / archive_name)
    download_dir = archive.parent  # a folder holding only the archive
    for split in ("train", "test"):
        x, y, info = data.load_split(source, split, data_dir=folder)
        for data_dir in (archive, download_dir):
            tx, ty, tinfo = data.load_split(source, split, data_dir=data_dir)
            np.testing.assert_array_equal(tx, x)
            np.testing.assert_array_equal(ty, y)
            assert tx.dtype == np.uint8 and ty.dtype == np.int32 and tx.shape[1:] == (32, 32, 3)
            assert tinfo.class_names == info.class_names and tinfo.mean == info.mean
            assert tinfo.source_path == str(archive)
    assert len(info.class_names) == RELEASES[source][6] and info.class_names[1] == "class1"
    # An unpacked folder next to the archive is preferred (it is what the user unpacked).
    _write_release(download_dir, source)
    assert data.load_split(source, "test", data_dir=download_dir)[2].source_path == str(
        download_dir / RELEASES[source][0]
    )


def test_tarball_missing_member_names_archive_and_member(tmp_path):
    folder = _write_release(tmp_path, "cifar10_pickle")
    archive = _write_tarball(folder, tmp_path / "c.tar.gz", skip=("data_batch_3",))
    expected = rf"archive {re.escape(str(archive))} has no member cifar-10-batches-py/data_batch_3"
    with pytest.raises(ValueError, match=expected):
        data.check_split("cifar10_pickle", "train", data_dir=archive)
    with pytest.raises(ValueError, match=expected):
        data.load_split("cifar10_pickle", "train", data_dir=archive)
    data.check_split("cifar10_pickle", "test", data_dir=archive)  # the test split is complete


def test_tarball_with_code_running_pickle_is_refused(tmp_path):
    folder = _write_release(tmp_path, "cifar10_pickle")
    marker = tmp_path / "code_ran"
    payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _RunsCode(marker)}
    _write_pickle(folder / "test_batch", payload)
    archive = _write_tarball(folder, tmp_path / "dl" / "cifar-10-python.tar.gz")
    member = re.escape(f"{archive}:cifar-10-batches-py/test_batch")
    with pytest.raises(ValueError, match=rf"{member}.*refusing to load global (posix|os)\.system"):
        data.load_split("cifar10_pickle", "test", data_dir=archive)
    assert not marker.exists()


def test_damaged_tarball_is_a_value_error(tmp_path):
    folder = _write_release(tmp_path, "cifar100_pickle")
    archive = _write_tarball(folder, tmp_path / "cifar-100-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"cannot read archive {re.escape(str(archive))}"):
        data.check_split("cifar100_pickle", "train", data_dir=archive)


# --------------------------------------------------------------------------- tfds


def _write_tfds_metadata(data_dir: Path, name: str, file_format: str, n: int = 4) -> None:
    """What `tfds build --file_format=...` leaves besides the record files (no TensorFlow)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    info = builder.info
    info.set_file_format(file_format, override=True)
    info.features["label"].names = [f"c{i}" for i in range(info.features["label"].num_classes)]

    def template(split: str):
        return tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=name, split=split, filetype_suffix=file_format
        )

    splits = [
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template(s))
        for s in ("train", "test")
    ]
    info.set_splits(tfds.core.SplitDict(splits))
    Path(builder.data_path).mkdir(parents=True)
    info.write_to_directory(builder.data_path)


def test_tfds_data_dir_comes_from_tfds_data_dir_at_call_time(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    env_dir = tmp_path / "from_env"
    monkeypatch.setenv("TFDS_DATA_DIR", str(env_dir))  # after tfds was imported
    with pytest.raises(FileNotFoundError) as err:
        data.check_split("cifar10", "train")
    assert f"not prepared at {env_dir / 'cifar10'}" in str(err.value)
    assert not env_dir.exists()  # nothing created
    _write_tfds_metadata(env_dir, "cifar10", "array_record")
    data.check_split("cifar10", "train")  # tfds found the prepared data in $TFDS_DATA_DIR
    with tfds.testing.mock_data(num_examples=4, data_dir=str(env_dir)):
        x, _, info = data.load_split("cifar10", "test", cache_dir=tmp_path / "c")
    assert info.source_path == str(env_dir) and x.shape == (4, 32, 32, 3)
    # An explicit data_dir wins over the variable.
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "other" / "cifar10"))):
        data.check_split("cifar10", "train", data_dir=tmp_path / "other")


def test_tfds_tfrecord_without_tensorflow_says_what_to_install_or_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    root = tmp_path / "tfds"
    _write_tfds_metadata(root, "cifar100", "tfrecord")
    with pytest.raises(ValueError) as err:
        data.load_split("cifar100", "train", data_dir=root, cache_dir=tmp_path / "c")
    msg = str(err.value)
    data_path = next((root / "cifar100").iterdir())  # <root>/cifar100/<version>
    assert f"the data at {data_path} is TFRecord" in msg
    assert "`pip install tensorflow`" in msg
    assert f"`tfds build cifar100 --file_format=array_record --data_dir={root} --overwrite`" in msg


def test_tfds_tfrecord_with_tensorflow_reads_through_tf_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    root = tmp_path / "tfds"
    _write_tfds_metadata(root, "cifar10", "tfrecord")
    rng = np.random.default_rng(0)
    batches = [
        {"image": rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8), "label": np.arange(b) % 10}
        for b in (3, 2)
    ]
    calls = []

    def as_dataset(builder, *, split, shuffle_files, batch_size, read_config):
        calls.append((split, shuffle_files, read_config.interleave_cycle_length))
        return batches

    # Stand-ins for what TensorFlow would provide (it is not installed here).
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)
    monkeypatch.setattr(tfds, "as_numpy", lambda ds: iter(ds))
    monkeypatch.setattr(tfds, "ReadConfig", lambda **kw: types.SimpleNamespace(**kw))
    data.check_split("cifar10", "test", data_dir=root)
    x, y, info = data.load_split("cifar10", "test", data_dir=root, cache_dir=tmp_path / "c")
    assert calls == [("test", False, 1)]  # in shard order, as the ArrayRecord reader
    np.testing.assert_array_equal(x, np.concatenate([b["image"] for b in batches]))
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1])
    assert x.dtype == np.uint8 and y.dtype == np.int32 and info.class_names[0] == "c0"


def test_tfds_download_prepares_missing_data_only_with_tensorflow(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    root = tmp_path / "tfds"
    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: False)
    for call in (data.check_split, data.load_split):
        with pytest.raises(ValueError, match=r"download=True .*needs TensorFlow.*pip install"):
            call("cifar10", "test", data_dir=root, download=True)
    with pytest.raises(ValueError, match="cannot download"):
        data.load_split("digits", "test", download=True)

    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    prepared = []

    def download_and_prepare(builder, *args, **kwargs):
        prepared.append(builder.data_dir)
        _write_tfds_metadata(root, "cifar10", "array_record")

    data.check_split("cifar10", "test", data_dir=root, download=True)  # dry run: nothing fetched
    assert prepared == [] and not root.exists()
    with (
        tfds.testing.mock_data(num_examples=4, data_dir=str(root)),
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare),
    ):
        kw = dict(data_dir=root, cache_dir=tmp_path / "c", download=True)
        x, _, _ = data.load_split("cifar10", "test", **kw)
        data.load_split("cifar10", "train", **kw)  # prepared now: not downloaded again
    assert len(prepared) == 1 and str(root) in str(prepared[0]) and x.shape == (4, 32, 32, 3)
