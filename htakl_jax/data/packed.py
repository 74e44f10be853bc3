"""The packed image-folder file: every encoded image of a data set stored once, with one index.

A packed file is an uncompressed NumPy ``.npz`` (a zip of ``.npy`` members) holding:

- ``format``: int64 scalar, :data:`FORMAT_VERSION`;
- ``classes``: str [K], the class names in label order;
- ``splits``: str [S], the split names;
- per split ``s``: ``s.data`` uint8 [total bytes] (the encoded files, concatenated as they are on
  disk), ``s.offsets`` int64 [N + 1] (image i is ``data[offsets[i]:offsets[i + 1]]``),
  ``s.labels`` int32 [N] and ``s.names`` uint8 (the images' ``<class>/<file>`` names, UTF-8,
  newline-separated; for error messages).

Against a zip of the image files it saves the per-file zip headers (about 10 MB for the 60,000
CIFAR-10 JPEGs, which hold 52.7 MiB of encoded bytes), and it is one file to copy to a machine or
to read from network storage. `htakl_jax.data.pack` writes it from a folder; the ``image_folder``
source reads it wherever it reads a folder. Imports only NumPy.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
SUFFIX = ".npz"


@dataclasses.dataclass(frozen=True)
class PackedSplit:
    """One split of a packed file: encoded images, labels int32 [N] and names [N]."""

    data: np.ndarray  # uint8 [total bytes]
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray  # int32 [N]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def encoded(self, i: int) -> bytes:
        """The encoded bytes of image `i` (a JPEG or PNG file's content)."""
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()


def is_packed(path: str | os.PathLike) -> bool:
    """Whether `path` names a file with the packed suffix (the contents are checked on open)."""
    path = Path(path)
    return path.suffix == SUFFIX and not path.is_dir()


class PackedFile:
    """Read access to a packed file; members are read on first use. Use as a context manager.

    Raises ValueError naming the file when it is not a packed file of a known format version.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"packed data file {self.path} does not exist")
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.path} is not a packed data file (.npz): {e}") from e
        keys = set(self._npz.files)
        if not {"format", "classes", "splits"} <= keys:
            self.close()
            raise ValueError(
                f"{self.path} is an .npz but not a packed data file (members {sorted(keys)}); "
                "write one with `python -m htakl_jax.data.pack SRC_DIR OUT_FILE`"
            )
        version = int(self._npz["format"])
        if version != FORMAT_VERSION:
            self.close()
            raise ValueError(
                f"{self.path} has packed format {version}; this version reads {FORMAT_VERSION}"
            )
        self.classes: tuple[str, ...] = tuple(str(c) for c in self._npz["classes"])
        self.splits: tuple[str, ...] = tuple(str(s) for s in self._npz["splits"])

    def split(self, name: str) -> PackedSplit:
        """The split `name` (a ValueError lists the splits when it is absent)."""
        if name not in self.splits:
            raise ValueError(
                f"packed file {self.path} has no split {name!r}; it holds {self.splits}"
            )
        names = self._npz[f"{name}.names"].tobytes().decode()
        return PackedSplit(
            data=self._npz[f"{name}.data"],
            offsets=self._npz[f"{name}.offsets"].astype(np.int64),
            labels=self._npz[f"{name}.labels"].astype(np.int32),
            names=tuple(names.split("\n")) if names else (),
        )

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> PackedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_packed(
    path: str | os.PathLike,
    classes: Sequence[str],
    splits: Mapping[str, tuple[Sequence[bytes], Sequence[int], Sequence[str]]],
) -> int:
    """Writes a packed file atomically (temporary file, then rename); returns its size in bytes.

    `splits` maps a split name to (encoded images, labels, names), one entry per image.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(FORMAT_VERSION, np.int64),
        "classes": np.asarray(list(classes), dtype=str),
        "splits": np.asarray(list(splits), dtype=str),
    }
    for name, (encoded, labels, names) in splits.items():
        if not len(encoded) == len(labels) == len(names):
            raise ValueError(
                f"split {name!r}: {len(encoded)} images, {len(labels)} labels, {len(names)} names"
            )
        sizes = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
        arrays[f"{name}.data"] = np.frombuffer(b"".join(encoded), np.uint8)
        arrays[f"{name}.offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"{name}.labels"] = np.asarray(labels, np.int32)
        arrays[f"{name}.names"] = np.frombuffer("\n".join(names).encode(), np.uint8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{SUFFIX}")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size
