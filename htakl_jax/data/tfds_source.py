"""tensorflow-datasets prepared data for the "cifar10" / "cifar100" sources.

Where the data is looked for: the `data_dir` argument, else `$TFDS_DATA_DIR` (read at each call:
tfds itself reads it once, when it is imported), else ~/tensorflow_datasets. tfds is always handed
that one folder, so the error messages name the folder actually searched.

How it is read:
- ArrayRecord (or Parquet) data, e.g. from `tfds build NAME --file_format=array_record` or
  `tfds convert_format`: random access through `builder.as_data_source`, no TensorFlow needed.
- TFRecord data (what `tfds.load` and `tfds build` write by default): through
  `builder.as_dataset` when TensorFlow is installed; without it a ValueError says what to install
  or how to rebuild.
`download=True` runs `builder.download_and_prepare()` (TensorFlow and internet needed) when the
data is not prepared yet.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

_TF_BATCH = 1024  # examples per tf.data batch when reading TFRecord (fewer Python iterations)


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The tfds data_dir: `data_dir`, else `$TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or Path("~") / "tensorflow_datasets"
    return Path(data_dir).expanduser()


def _display_format(fmt: Any) -> str:
    value = getattr(fmt, "value", str(fmt))
    return {"tfrecord": "TFRecord", "array_record": "ArrayRecord"}.get(value, value)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """One tfds dataset behind a source.

    source: the source name (in messages). tfds_name: the tfds dataset name. pickle_source /
    url: the alternative source and the archive it reads (offered when tfds data is missing).
    """

    source: str
    tfds_name: str
    pickle_source: str
    url: str

    def builder(self, root: Path) -> Any:
        """The tfds builder reading `root` (builds nothing, creates no folder)."""
        import tensorflow_datasets as tfds  # lazy: heavy import, only these sources need it

        return tfds.builder(self.tfds_name, data_dir=str(root))

    def prepared_builder(self, root: Path) -> Any:
        """The builder of the prepared data in `root`, if this machine can read it.

        Raises FileNotFoundError (not prepared) or ValueError (TFRecord without TensorFlow),
        both saying what to do.
        """
        builder = self.builder(root)
        if not builder.is_prepared():
            raise FileNotFoundError(self._not_prepared_message(builder, root))
        if not self.random_access(builder) and not tensorflow_available():
            raise ValueError(self._needs_tensorflow_message(builder, root))
        return builder

    @staticmethod
    def random_access(builder: Any) -> bool:
        """Whether the prepared data has a format readable without TensorFlow (counting the
        alternative formats `tfds convert_format` adds)."""
        from tensorflow_datasets.core import file_adapters

        readable = {file_adapters.FileFormat.ARRAY_RECORD, file_adapters.FileFormat.PARQUET}
        return bool(builder.info.available_file_formats() & readable)

    def prepare(self, root: Path, *, dry_run: bool = False) -> bool:
        """download=True: download and prepare the data in `root` unless it is prepared already.

        Returns whether the data was missing (dry_run: only check that it could be prepared).
        Raises ValueError when TensorFlow, which preparing needs, is not installed.
        """
        builder = self.builder(root)
        if builder.is_prepared():
            return False
        n = self.tfds_name
        if not tensorflow_available():
            raise ValueError(
                f"{self.source}: download=True prepares {n!r} in {root} with "
                "tensorflow-datasets, which needs TensorFlow (not installed here). Either "
                f"`pip install tensorflow`, or on a machine with TensorFlow run `tfds build {n} "
                f"--file_format=array_record` and copy ~/tensorflow_datasets/{n} to {root / n}, "
                f"or download {self.url} and use source {self.pickle_source!r} with data_dir "
                "pointing at that .tar.gz."
            )
        if not dry_run:
            builder.download_and_prepare()
        return True

    def class_names(self, root: Path) -> tuple[str, ...]:
        return tuple(self.prepared_builder(root).info.features["label"].names)

    def read_split(self, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [N, H, W, 3] and labels int32 [N] of `split` (tfds split syntax)."""
        builder = self.prepared_builder(root)
        if self.random_access(builder):
            return self._read_data_source(builder.as_data_source(split=split), split)
        return self._read_tf_dataset(builder, split)

    def _read_data_source(self, source: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
        n = len(source)
        if n == 0:
            raise ValueError(f"{self.source}: split {split!r} is empty")
        first = np.asarray(source[0]["image"])
        images = np.empty((n, *first.shape[:2], 3), dtype=np.uint8)
        labels = np.empty((n,), dtype=np.int32)
        for i in range(n):
            example = source[i]
            img = np.asarray(example["image"], dtype=np.uint8)
            images[i] = np.broadcast_to(img, images.shape[1:])  # [H, W, 1] grayscale -> RGB
            labels[i] = int(example["label"])
        return images, labels

    def _read_tf_dataset(self, builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
        """TFRecord data through tf.data (TensorFlow installed), shards in order."""
        import tensorflow_datasets as tfds

        # Shards one after another (no interleaving): TFRecord and ArrayRecord copies of a split
        # then list the examples in the same order, so subsets drawn by index agree.
        read_config = tfds.ReadConfig(interleave_cycle_length=1)
        ds = builder.as_dataset(
            split=split, shuffle_files=False, batch_size=_TF_BATCH, read_config=read_config
        )
        images, labels = [], []
        for batch in tfds.as_numpy(ds):
            img = np.asarray(batch["image"], dtype=np.uint8)
            images.append(np.broadcast_to(img, (*img.shape[:3], 3)))  # grayscale -> RGB
            labels.append(np.asarray(batch["label"], dtype=np.int32))
        if not images:
            raise ValueError(f"{self.source}: split {split!r} is empty")
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    def _not_prepared_message(self, builder: Any, root: Path) -> str:
        n = self.tfds_name
        return (
            f"{self.source}: tensorflow-datasets data for {n!r} is not prepared at "
            f"{builder.data_path} (data_dir {root}: the data_dir option, else $TFDS_DATA_DIR, "
            "else ~/tensorflow_datasets). Either (1) with TensorFlow and internet here, pass "
            f"download=True (or run `pip install tensorflow && tfds build {n} --data_dir={root}`)"
            f"; without TensorFlow here, on a machine with it run `tfds build {n} "
            f"--file_format=array_record` (readable without TensorFlow), then copy "
            f"~/tensorflow_datasets/{n} to {root / n}; or (2) download {self.url} and use source "
            f"{self.pickle_source!r} with data_dir pointing at that .tar.gz (or at the folder it "
            "unpacks to); or (3) use source 'image_folder' with data_dir/<split>/<class>/*.png."
        )

    def _needs_tensorflow_message(self, builder: Any, root: Path) -> str:
        n = self.tfds_name
        fmt = _display_format(builder.info.file_format)
        if fmt == "TFRecord":
            fmt += " (the default of `tfds.load` and `tfds build`)"
        return (
            f"{self.source}: the data at {builder.data_path} is {fmt}, which only TensorFlow can "
            "read, and TensorFlow is not installed. "
            "Either `pip install tensorflow` (the data is then read as it is), or rebuild it as "
            "ArrayRecord, which is read without TensorFlow, on a machine with TensorFlow: "
            f"`tfds build {n} --file_format=array_record --data_dir={root} --overwrite` "
            "(--overwrite replaces the existing copy; without it tfds keeps the old one)."
        )
