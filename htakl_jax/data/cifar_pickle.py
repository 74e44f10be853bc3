"""The official CIFAR python pickles, from the unpacked folder or straight from the tarball.

`CifarPickles` reads one dataset (CIFAR-10 or CIFAR-100) from either
- the unpacked folder (`cifar-10-batches-py`, `cifar-100-python`) or its parent, or
- the downloaded archive (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) or a folder holding
  it: members are read from the tar in one streaming pass, nothing is extracted to disk.
Both give the same arrays, labels and class names. Every pickle goes through `SafeUnpickler`,
which admits only the dicts, lists, bytes, ints and NumPy arrays these files hold.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

CIFAR_ROW = 3 * 32 * 32  # one image: R, G, B planes of 32x32, row-major


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR python files hold: dicts, lists, bytes, str, ints
    and NumPy arrays. Any other global (a function or class a crafted file would call, e.g.
    os.system) raises pickle.UnpicklingError naming it, before anything is called."""

    # Built-in containers and scalars need no global; NumPy arrays need these (numpy 1 and 2
    # module names; protocol 5 rebuilds arrays with _frombuffer), and Python 3 protocol-2
    # pickles rebuild bytes with _codecs.encode. Each only builds an array or bytes.
    ALLOWED = frozenset(
        (f"numpy.{core}.{module}", name)
        for core in ("core", "_core")
        for module, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    ) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR pickles may hold only dicts, "
                "lists, bytes, str, ints and NumPy arrays"
            )
        return super().find_class(module, name)


# What a damaged archive raises while it is read (bad header, truncated gzip stream, bad CRC).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclasses.dataclass(frozen=True)
class CifarPickles:
    """The file layout of one CIFAR python release.

    name: the source name (in messages). folder: the folder the archive unpacks to. archive: the
    official archive's file name. files: split -> pickle files, in label order of the release.
    meta_file / names_key: where the class names are. label_key: the labels of a batch file.
    """

    name: str
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    meta_file: str
    label_key: bytes
    names_key: bytes

    # ------------------------------------------------------------------ locating the data

    def find_root(self, root: Path) -> Path:
        """The unpacked folder (`root` itself or `root/folder`), else the archive in `root`."""
        if (root / self.meta_file).exists():
            return root
        if (root / self.folder).is_dir():
            return root / self.folder  # the parent of the unpacked folder
        if (root / self.archive).is_file():
            return root / self.archive  # the download, not unpacked
        return root  # `check` reports what is missing

    def archive_root(self, path: Path) -> Path:
        """`path` when it is a tar archive; a ValueError for any other file."""
        try:
            is_tar = tarfile.is_tarfile(path)
        except OSError as e:
            raise ValueError(f"{self.name}: cannot read data_dir {path}: {e}") from e
        if not is_tar:
            # One-line user error: a file that is neither the folder nor the archive.
            raise ValueError(
                f"{self.name}: data_dir {path} is a file; it must be a folder (the unpacked "
                f"{self.folder} or its parent) or the official {self.archive}"
            )
        return path

    def _members(self, split: str | None) -> list[str]:
        files = [self.meta_file] if split is None else [self.meta_file, *self.files[split]]
        return [f"{self.folder}/{f}" for f in files]

    # ------------------------------------------------------------------ checks and reading

    def check(self, root: Path, split: str) -> None:
        """Raise if the meta file or a pickle of `split` is missing (nothing is unpickled)."""
        if root.is_file():
            names = self._archive_names(root)
            for member in self._members(split):
                if member not in names:
                    raise ValueError(
                        f"{self.name}: archive {root} has no member {member}; expected the "
                        f"official {self.archive} (members {', '.join(self._members(split))})"
                    )
            return
        for f in [self.meta_file, *self.files[split]]:
            if not (root / f).is_file():
                all_files = [f for files in self.files.values() for f in files]
                raise FileNotFoundError(
                    f"{self.name}: {root / f} not found; data_dir must be the unpacked "
                    f"{self.folder} folder (files: {self.meta_file}, {', '.join(all_files)}), "
                    f"its parent, or the official {self.archive}"
                )

    def class_names(self, root: Path) -> tuple[str, ...]:
        """The release's class names, in label order."""
        (meta,) = self._read(root, [self.meta_file])
        where = self._where(root, self.meta_file)
        if self.names_key not in meta:
            raise ValueError(f"{self.name}: {where} has no key {self.names_key!r}")
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.names_key])

    def read_split(self, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [N, 32, 32, 3] (HWC, RGB) and labels int32 [N] of `split`, files in
        release order."""
        images, labels = [], []
        for f, d in zip(self.files[split], self._read(root, self.files[split]), strict=True):
            where = self._where(root, f)
            for key in (b"data", self.label_key):
                if key not in d:
                    raise ValueError(f"{self.name}: {where} has no key {key!r}")
            data = np.asarray(d[b"data"])
            lab = np.asarray(d[self.label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != CIFAR_ROW or data.shape[0] != lab.shape[0]:
                raise ValueError(
                    f"{self.name}: {where} has data of shape {data.shape} and {lab.shape[0]} "
                    f"labels; expected [N, {CIFAR_ROW}] (R, G, B planes of 32x32) with N labels"
                )
            # Rows are channel-major planes: [N, 3, 32, 32] -> NHWC.
            images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        return (
            np.ascontiguousarray(np.concatenate(images)),
            np.concatenate(labels).astype(np.int32),
        )

    # ------------------------------------------------------------------ folder or archive

    def _where(self, root: Path, file: str) -> str:
        return f"{root}:{self.folder}/{file}" if root.is_file() else str(root / file)

    def _read(self, root: Path, files: Iterable[str]) -> list[dict]:
        """The unpickled dicts of `files` (names inside the release folder), in that order."""
        files = list(files)
        if root.is_file():
            found = self._read_archive(root, {f"{self.folder}/{f}": f for f in files})
            return [found[f] for f in files]
        out = []
        for f in files:
            with open(root / f, "rb") as fh:
                out.append(self._unpickle(fh, str(root / f)))
        return out

    def _archive_names(self, archive: Path) -> set[str]:
        try:
            with tarfile.open(archive, "r:*") as tar:
                return {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
        except _ARCHIVE_ERRORS as e:
            raise ValueError(f"{self.name}: cannot read archive {archive}: {e}") from e

    def _read_archive(self, archive: Path, wanted: dict[str, str]) -> dict[str, dict]:
        """{file: dict} for the members `wanted` (member name -> file), in one streaming pass
        (a .tar.gz cannot seek back cheaply) that stops once all are read."""
        found: dict[str, dict] = {}
        try:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and name in wanted and wanted[name] not in found:
                        fh = tar.extractfile(member)
                        found[wanted[name]] = self._unpickle(fh, f"{archive}:{name}")
                        if len(found) == len(set(wanted.values())):
                            break
        except _ARCHIVE_ERRORS as e:
            raise ValueError(f"{self.name}: cannot read archive {archive}: {e}") from e
        missing = sorted(m for m, f in wanted.items() if f not in found)
        if missing:
            raise ValueError(
                f"{self.name}: archive {archive} has no member {missing[0]}; expected the "
                f"official {self.archive}"
            )
        return found

    def _unpickle(self, fh: IO[bytes], where: str) -> dict:
        try:
            d = SafeUnpickler(fh, encoding="bytes").load()
        except Exception as e:  # pickle raises many types on a bad file
            raise ValueError(f"{self.name}: cannot unpickle {where}: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{self.name}: {where} does not hold a dict (got {type(d).__name__})")
        return d


CIFAR10 = CifarPickles(
    name="cifar10_pickle",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
)
CIFAR100 = CifarPickles(
    name="cifar100_pickle",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    files={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
)
