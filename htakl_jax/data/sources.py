"""Dataset sources: one entry point, `load_split`, returning a split as uint8 arrays + metadata.

Sources (the `name` argument):

- "digits": scikit-learn's bundled 8x8 handwritten digits (offline), as uint8 RGB. Split: within
  each class, in the bundled order, every 5th example (positions 4, 9, 14, ...) is "test", the rest
  "train" (1442 / 355, stratified, no RNG so it never changes across library versions).
- "cifar10", "cifar100": tensorflow-datasets prepared data (`htakl_jax.data.tfds_source`), in
  `data_dir`, else `$TFDS_DATA_DIR`, else ~/tensorflow_datasets. ArrayRecord data (`tfds build NAME
  --file_format=array_record`) is read without TensorFlow; TFRecord data (the default of
  `tfds.load` / `tfds build`) is read through tf.data where TensorFlow is installed (without it the
  error says what to install or how to rebuild). `download=True` prepares missing data (TensorFlow
  and internet needed); otherwise the error says how to get it.
- "cifar10_pickle", "cifar100_pickle": the official python pickles (`htakl_jax.data.cifar_pickle`):
  the unpacked folder `cifar-10-batches-py` (data_batch_1..5, test_batch, batches.meta) /
  `cifar-100-python` (train, test, meta; fine labels) or its parent, or the downloaded archive
  `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz` as it is (or a folder holding it), read
  without unpacking. Every pickle goes through a restricted unpickler (`SafeUnpickler`) that
  refuses anything but dicts, lists, bytes, str, ints and NumPy arrays.
- "image_folder": `root/<split>/<class>/*.{jpg,jpeg,png,bmp}`; classes are the sorted class folders
  of `root/train` (or of `root/<split>` when there is no train folder), so every split shares one
  label order. `data_dir` may also be the packed file of such a folder (`python -m
  htakl_jax.data.pack`, see `htakl_jax.data.packed`): the same arrays, labels and caching.
- "tiny_imagenet": the native `tiny-imagenet-200` layout (wnids.txt, train/<wnid>/images/*.JPEG,
  val/images + val/val_annotations.txt, optional words.txt for class names). Labels follow the
  sorted wnids. Splits "train" and "val"; "test" is an alias of "val" (the official test split is
  unlabelled).

Channel statistics (`DatasetInfo.mean/std`, [0, 1] units, population std over all pixels) are the
published constants for the tfds CIFAR sources and, for local sources, computed from the source's
train split (whichever split is loaded, so train and test are normalised alike).

Images decoded from files (image_folder, tiny_imagenet, tfds) are cached as .npy (see `cache.py`).
A corrupt or unreadable image file raises a ValueError naming it; `skip_corrupt=True` instead warns,
names it and leaves it out.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from htakl_jax.data import cache as cache_lib
from htakl_jax.data import cifar_pickle, tfds_source
from htakl_jax.data import packed as packed_lib
from htakl_jax.data.cifar_pickle import SafeUnpickler as SafeUnpickler  # re-export (was here)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a loaded split.

    mean/std: per RGB channel, in [0, 1] pixel units (for `normalize`).
    image_size: (H, W) in pixels. skipped: files left out by `skip_corrupt=True`.
    """

    name: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    num_examples: int
    source_path: str | None = None
    skipped: tuple[str, ...] = ()


@dataclasses.dataclass
class _Decoded:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]
    skipped: tuple[str, ...] = ()


# --------------------------------------------------------------------------- image decoding


def _decode_image(image: str | bytes) -> np.ndarray:
    """Decode one image (a file path, or a file's encoded bytes) to uint8 RGB [H, W, 3]
    (grayscale/palette/RGBA converted)."""
    from PIL import Image

    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
        img.load()  # forces the full decode so truncated files fail here, not later
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode_files(
    images: Sequence[str] | Sequence[bytes],
    labels: Sequence[int],
    *,
    skip_corrupt: bool,
    num_workers: int | None,
    names: Sequence[str] | None = None,
) -> _Decoded:
    """Decode image files (paths, or encoded bytes named by `names`) in a thread pool (PIL
    releases the GIL while decoding)."""
    if not images:
        raise ValueError("no image files to decode")
    paths = images if names is None else names

    def safe_decode(image: str | bytes) -> np.ndarray | Exception:
        try:
            return _decode_image(image)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad/truncated files
            return e

    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(safe_decode, images))

    kept_images, kept_labels, skipped = [], [], []
    shape = None
    for path, label, result in zip(paths, labels, results, strict=True):
        if isinstance(result, Exception):
            if not skip_corrupt:
                raise ValueError(
                    f"corrupt or unreadable image file {path}: {result}. Fix or remove it, or "
                    "pass skip_corrupt=True to skip such files with a warning."
                ) from result
            warnings.warn(
                f"skipping corrupt or unreadable image file {path}: {result}", stacklevel=3
            )
            skipped.append(path)
            continue
        if shape is None:
            shape = result.shape
        elif result.shape != shape:
            raise ValueError(
                f"image {path} has shape {result.shape} but earlier images have {shape}; all "
                "images of a split must share one size"
            )
        kept_images.append(result)
        kept_labels.append(label)
    if not kept_images:
        raise ValueError(f"every image file was unreadable (first: {paths[0]})")
    return _Decoded(
        np.stack(kept_images).astype(np.uint8, copy=False),
        np.asarray(kept_labels, dtype=np.int32),
        tuple(skipped),
    )


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# --------------------------------------------------------------------------- sources


class _Source:
    """A dataset source. Subclasses define layout checks, decoding and class names."""

    name: str
    needs_data_dir: bool = True
    cacheable: bool = False
    splits: tuple[str, ...] | None = ("train", "test")  # None: any name the layout offers
    aliases: dict[str, str] = {}
    constant_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def resolve(self, data_dir: str | os.PathLike | None) -> Path | None:
        """Validated root folder (or None for sources without one)."""
        if not self.needs_data_dir:
            if data_dir is not None:
                raise ValueError(f"source {self.name!r} takes no data_dir (got {data_dir!r})")
            return None
        if data_dir is None:
            raise ValueError(f"source {self.name!r} needs data_dir (the dataset folder)")
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"{self.name}: data_dir {root} does not exist")
        if not root.is_dir():
            # ValueError: a user error, reported as one line (the packed image-folder file is
            # handled before this, by the image_folder source).
            raise ValueError(f"{self.name}: data_dir {root} is a file; it must be a folder")
        return root

    def canonical_split(self, split: str) -> str:
        split = self.aliases.get(split, split)
        if self.splits is not None and split not in self.splits:
            raise ValueError(
                f"source {self.name!r} has no split {split!r}; choose one of {list(self.splits)}"
            )
        return split

    def prepare(self, root: Path | None, *, dry_run: bool = False) -> bool:
        """download=True: fetch and prepare missing data; returns whether it was missing
        (dry_run: only check that it could be fetched). Only the tfds sources can."""
        raise ValueError(
            f"source {self.name!r} cannot download its data; download=True is for the "
            "tensorflow-datasets sources (cifar10, cifar100)"
        )

    def check(self, root: Path | None, split: str) -> None:
        """Raise if the layout for `split` is wrong, without decoding anything."""

    def fingerprint_paths(self, root: Path | None, split: str) -> list[Path]:
        """Files/folders whose listing (names, sizes, mtimes) keys the cache."""
        return [root] if root is not None else []

    def class_names(self, root: Path | None, split: str) -> tuple[str, ...]:
        raise NotImplementedError

    def decode(
        self, root: Path | None, split: str, *, skip_corrupt: bool, num_workers: int | None
    ) -> _Decoded:
        raise NotImplementedError


class _Digits(_Source):
    name = "digits"
    needs_data_dir = False

    def class_names(self, root, split):
        return tuple(str(i) for i in range(10))

    def decode(self, root, split, *, skip_corrupt, num_workers):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # 0..16 intensities -> 0..255 (16 * 255 / 16 = 255 exactly).
        gray = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
        targets = bunch.target.astype(np.int32)
        is_test = np.zeros(len(targets), dtype=bool)
        for c in np.unique(targets):
            idx = np.flatnonzero(targets == c)
            is_test[idx[4::5]] = True
        keep = is_test if split == "test" else ~is_test
        images = np.repeat(gray[keep][..., None], 3, axis=-1)
        return _Decoded(np.ascontiguousarray(images), targets[keep])


class _CifarPickle(_Source):
    """The official CIFAR python pickles (see `htakl_jax.data.cifar_pickle`): the unpacked
    folder, its parent, the .tar.gz archive, or a folder holding the archive."""

    def __init__(self, pickles: cifar_pickle.CifarPickles):
        self.pickles = pickles
        self.name = pickles.name

    def resolve(self, data_dir):
        path = None if data_dir is None else Path(data_dir).expanduser()
        if path is not None and path.is_file():
            return self.pickles.archive_root(path)
        return self.pickles.find_root(super().resolve(data_dir))

    def check(self, root, split):
        self.pickles.check(root, split)

    def class_names(self, root, split):
        return self.pickles.class_names(root)

    def decode(self, root, split, *, skip_corrupt, num_workers):
        return _Decoded(*self.pickles.read_split(root, split))


def _folder_classes(root: Path, split: str) -> tuple[str, ...]:
    ref = root / "train" if (root / "train").is_dir() else root / split
    return tuple(_subdirs(ref))


def image_folder_files(root: Path, split: str) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The image files of `root/<split>/<class>/` with their labels, and the class names: the
    sorted class folders of `root/train` (of `root/<split>` without a train folder), files sorted
    by name within each class. The one listing the image_folder source and the packer share."""
    classes = _folder_classes(root, split)
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = root / split / cls
        if cls_dir.is_dir():
            files = _list_images(cls_dir)
            paths += files
            labels += [label] * len(files)
    return paths, labels, classes


class _ImageFolder(_Source):
    """`root/<split>/<class>/*` image files, or the packed file of such a folder
    (`htakl_jax.data.packed`): same class order, image order, labels and cache."""

    name = "image_folder"
    cacheable = True
    splits = None

    def resolve(self, data_dir):
        if data_dir is not None and packed_lib.is_packed(data_dir):
            root = Path(data_dir).expanduser()
            packed_lib.PackedFile(root).close()  # exists and is a packed file
            return root
        return super().resolve(data_dir)

    def check(self, root, split):
        if root.is_file():
            with packed_lib.PackedFile(root) as f:
                if split not in f.splits:
                    raise FileNotFoundError(
                        f"image_folder: packed file {root} has no split {split!r}; it holds "
                        f"{list(f.splits)}"
                    )
            return
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"image_folder: split folder {split_dir} not found; expected the layout "
                f"root/<split>/<class>/*.jpg|png (subfolders of {root}: {_subdirs(root)})"
            )
        classes = _subdirs(split_dir)
        if not classes:
            loose = _list_images(split_dir)
            what = f"{len(loose)} images directly in it" if loose else "no class subfolders"
            raise ValueError(
                f"image_folder: {split_dir} has {what}; expected one subfolder per class "
                f"({split_dir}/<class>/*.jpg|png)"
            )
        known = set(self.class_names(root, split))
        extra = sorted(set(classes) - known)
        if extra:
            raise ValueError(
                f"image_folder: class folders {extra} in {split_dir} are missing from "
                f"{root / 'train'}; every split must use the train split's classes"
            )

    def fingerprint_paths(self, root, split):
        return [root] if root.is_file() else [root / split]

    def class_names(self, root, split):
        if root.is_file():
            with packed_lib.PackedFile(root) as f:
                return f.classes
        return _folder_classes(root, split)

    def has_train_split(self, root: Path) -> bool:
        if root.is_file():
            with packed_lib.PackedFile(root) as f:
                return "train" in f.splits
        return (root / "train").is_dir()

    def decode(self, root, split, *, skip_corrupt, num_workers):
        kw = dict(skip_corrupt=skip_corrupt, num_workers=num_workers)
        if root.is_file():
            with packed_lib.PackedFile(root) as f:
                part = f.split(split)
            images = [part.encoded(i) for i in range(len(part))]
            names = [f"{root}:{split}/{n}" for n in part.names]
            return _decode_files(images, part.labels.tolist(), names=names, **kw)
        paths, labels, _ = image_folder_files(root, split)
        if not paths:
            raise ValueError(
                f"image_folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under "
                f"{root / split}"
            )
        return _decode_files([str(p) for p in paths], labels, **kw)


class _TinyImageNet(_Source):
    name = "tiny_imagenet"
    cacheable = True
    splits = ("train", "val")
    aliases = {"test": "val"}

    def resolve(self, data_dir):
        root = super().resolve(data_dir)
        if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
            root = root / "tiny-imagenet-200"
        if not (root / "wnids.txt").is_file():
            raise FileNotFoundError(
                f"tiny_imagenet: {root / 'wnids.txt'} not found; data_dir must be the "
                "tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/, val/images/, "
                "val/val_annotations.txt)"
            )
        return root

    def _wnids(self, root: Path) -> list[str]:
        wnids = sorted({w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()})
        if not wnids:
            raise ValueError(f"tiny_imagenet: {root / 'wnids.txt'} lists no wnids")
        return wnids

    def check(self, root, split):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"tiny_imagenet: split folder {folder} not found")
        if split == "train":
            for w in self._wnids(root):
                if not (folder / w / "images").is_dir():
                    raise FileNotFoundError(
                        f"tiny_imagenet: {folder / w / 'images'} not found (wnid {w} of wnids.txt)"
                    )
        else:
            for p in (folder / "val_annotations.txt", folder / "images"):
                if not p.exists():
                    raise FileNotFoundError(f"tiny_imagenet: {p} not found")

    def fingerprint_paths(self, root, split):
        return [root / "wnids.txt", root / split]

    def class_names(self, root, split):
        wnids = self._wnids(root)
        words: dict[str, str] = {}
        words_file = root / "words.txt"
        if words_file.is_file():
            for line in words_file.read_text().splitlines():
                wnid, _, text = line.partition("\t")
                if text.strip():
                    words[wnid.strip()] = text.strip()
        return tuple(words.get(w, w) for w in wnids)

    def _val_files(self, root: Path, label_of: dict[str, int]) -> tuple[list[str], list[int]]:
        ann = root / "val" / "val_annotations.txt"
        paths, labels = [], []
        for lineno, line in enumerate(ann.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2 or parts[1] not in label_of:
                raise ValueError(
                    f"tiny_imagenet: {ann} line {lineno} ({line!r}) does not name an image and a "
                    "wnid listed in wnids.txt"
                )
            path = root / "val" / "images" / parts[0]
            if not path.is_file():
                raise FileNotFoundError(f"tiny_imagenet: {path} (listed in {ann}) not found")
            paths.append(str(path))
            labels.append(label_of[parts[1]])
        return paths, labels

    def decode(self, root, split, *, skip_corrupt, num_workers):
        wnids = self._wnids(root)
        label_of = {w: i for i, w in enumerate(wnids)}
        if split == "train":
            paths, labels = [], []
            for w in wnids:
                files = _list_images(root / "train" / w / "images")
                paths += [str(p) for p in files]
                labels += [label_of[w]] * len(files)
        else:
            paths, labels = self._val_files(root, label_of)
        if not paths:
            raise ValueError(f"tiny_imagenet: no images found under {root / split}")
        return _decode_files(paths, labels, skip_corrupt=skip_corrupt, num_workers=num_workers)


class _Tfds(_Source):
    """tensorflow-datasets prepared data (see `htakl_jax.data.tfds_source`)."""

    cacheable = True
    needs_data_dir = False
    splits = None  # tfds split syntax, e.g. "train", "test", "train[:90%]"

    def __init__(self, dataset: tfds_source.TfdsDataset, stats):
        self.dataset = dataset
        self.name = dataset.source
        self.constant_stats = stats

    def resolve(self, data_dir):
        return tfds_source.resolve_data_dir(data_dir)

    def prepare(self, root, *, dry_run=False):
        return self.dataset.prepare(root, dry_run=dry_run)

    def check(self, root, split):
        self.dataset.prepared_builder(root)

    def fingerprint_paths(self, root, split):
        return [Path(self.dataset.prepared_builder(root).data_path)]

    def class_names(self, root, split):
        return self.dataset.class_names(root)

    def decode(self, root, split, *, skip_corrupt, num_workers):
        return _Decoded(*self.dataset.read_split(root, split))


_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz"

SOURCES: dict[str, _Source] = {
    s.name: s
    for s in (
        _Digits(),
        _Tfds(
            tfds_source.TfdsDataset(
                "cifar10", "cifar10", "cifar10_pickle", f"{_CIFAR_URL}/cifar-10-python.tar.gz"
            ),
            _CIFAR10_STATS,
        ),
        _Tfds(
            tfds_source.TfdsDataset(
                "cifar100", "cifar100", "cifar100_pickle", f"{_CIFAR_URL}/cifar-100-python.tar.gz"
            ),
            _CIFAR100_STATS,
        ),
        _CifarPickle(cifar_pickle.CIFAR10),
        _CifarPickle(cifar_pickle.CIFAR100),
        _ImageFolder(),
        _TinyImageNet(),
    )
}


def _get_source(name: str) -> _Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset source {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


# --------------------------------------------------------------------------- statistics


def channel_stats(images_NHWC: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images, in [0, 1] units (exact, chunked)."""
    if images_NHWC.ndim != 4 or images_NHWC.shape[-1] != 3 or images_NHWC.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, H, W, 3] array, got {images_NHWC.shape}")
    s1 = np.zeros(3, np.float64)
    s2 = np.zeros(3, np.float64)
    for start in range(0, images_NHWC.shape[0], 4096):
        chunk = images_NHWC[start : start + 4096].reshape(-1, 3).astype(np.float64)
        s1 += chunk.sum(0)
        s2 += np.square(chunk).sum(0)
    count = images_NHWC.shape[0] * images_NHWC.shape[1] * images_NHWC.shape[2]
    mean = s1 / count
    var = np.maximum(s2 / count - mean**2, 0.0)
    return tuple(float(m / 255.0) for m in mean), tuple(float(np.sqrt(v) / 255.0) for v in var)


# --------------------------------------------------------------------------- entry points


def check_split(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, download: bool = False
) -> None:
    """Validate source name, split name and folder layout without decoding any image.

    Raises the same ValueError/FileNotFoundError that `load_split` would (cheap: for config checks).
    With download=True, missing tfds data passes when it could be downloaded (nothing is fetched).
    """
    src = _get_source(name)
    root = src.resolve(data_dir)
    split = src.canonical_split(split)
    if download and src.prepare(root, dry_run=True):
        return  # nothing on disk to check until load_split has downloaded it
    src.check(root, split)


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    skip_corrupt: bool = False,
    num_workers: int | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """Load one split of a dataset source.

    Args:
      name: a key of `SOURCES` (see the module docstring).
      split: "train" / "test" (tiny_imagenet: "train" / "val"; image_folder: any split folder;
        tfds sources: tfds split syntax).
      data_dir: the dataset folder (cifar*_pickle: or the official .tar.gz; tfds: its data_dir,
        default $TFDS_DATA_DIR, else ~/tensorflow_datasets).
      cache_dir: where decoded arrays are cached (default `$HTAKL_JAX_CACHE_DIR` or
        ~/.cache/htakl_jax). use_cache=False decodes every time and writes nothing.
      skip_corrupt: warn about and leave out unreadable image files instead of raising.
      num_workers: decoding threads (default min(8, cpus)).
      download: tfds sources only: download and prepare the data first when it is missing
        (needs TensorFlow and internet).

    Returns:
      images uint8 [N, H, W, 3], labels int32 [N] in [0, num_classes), DatasetInfo.
    """
    if download:
        src = _get_source(name)
        src.prepare(src.resolve(data_dir))
    images, labels, info = _load(
        name,
        split,
        data_dir=data_dir,
        cache_dir=cache_dir,
        use_cache=use_cache,
        skip_corrupt=skip_corrupt,
        num_workers=num_workers,
    )
    # Cached arrays arrive memory-mapped; hand out ordinary in-memory arrays.
    return np.array(images, dtype=np.uint8), np.array(labels, dtype=np.int32), info


def _load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    use_cache: bool,
    skip_corrupt: bool,
    num_workers: int | None,
) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """load_split without the final copy (the train split's stats need only its cache meta)."""
    src = _get_source(name)
    root = src.resolve(data_dir)
    split = src.canonical_split(split)
    src.check(root, split)
    class_names = src.class_names(root, split)
    entry = None
    if src.cacheable and use_cache:
        entry = _cache_entry(src, name, root, split, class_names, cache_dir, skip_corrupt)
    images, labels, meta = _read_or_decode(
        src, root, split, entry, skip_corrupt=skip_corrupt, num_workers=num_workers
    )
    skipped = tuple(meta["skipped"])

    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"{name}: labels of split {split!r} span [{labels.min()}, {labels.max()}] but there "
            f"are {len(class_names)} class names"
        )

    mean, std = _split_stats(
        src,
        split,
        images,
        meta,
        entry,
        load_train=lambda: _load(
            name,
            "train",
            data_dir=data_dir,
            cache_dir=cache_dir,
            use_cache=use_cache,
            skip_corrupt=skip_corrupt,
            num_workers=num_workers,
        ),
        has_train=_has_train_split(src, root),
    )
    info = DatasetInfo(
        name=name,
        split=split,
        num_classes=len(class_names),
        class_names=class_names,
        mean=mean,
        std=std,
        image_size=(int(images.shape[1]), int(images.shape[2])),
        num_examples=int(images.shape[0]),
        source_path=None if root is None else str(root),
        skipped=skipped,
    )
    return images, labels, info


def _cache_entry(
    src: _Source,
    name: str,
    root: Path | None,
    split: str,
    class_names: Sequence[str],
    cache_dir: str | os.PathLike | None,
    skip_corrupt: bool,
) -> Path:
    """The cache folder of a split, keyed by its source, files and decoding options."""
    key = cache_lib.cache_key(
        source=name,
        root=str(root.resolve()) if root is not None else None,
        split=split,
        classes=class_names,
        skip_corrupt=skip_corrupt,
        files=cache_lib.tree_fingerprint(src.fingerprint_paths(root, split)),
    )
    cache_root = cache_dir if cache_dir is not None else cache_lib.default_cache_root()
    return cache_lib.entry_dir(cache_root, f"{name}-{split}", key)


def _read_or_decode(
    src: _Source,
    root: Path | None,
    split: str,
    entry: Path | None,
    *,
    skip_corrupt: bool,
    num_workers: int | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(images, labels, cache meta) from the cache `entry`, else decoded (and cached there)."""
    cached = None if entry is None else cache_lib.read_entry(entry)
    if cached is not None:
        images, labels, meta = cached
        for path in meta.get("skipped", ()):
            warnings.warn(f"skipped corrupt or unreadable image file {path} (cached)", stacklevel=3)
        return images, labels, {"skipped": []} | meta
    decoded = src.decode(root, split, skip_corrupt=skip_corrupt, num_workers=num_workers)
    meta = {"skipped": list(decoded.skipped)}
    if entry is not None:
        cache_lib.write_entry(entry, decoded.images, decoded.labels, meta)
    return decoded.images, decoded.labels, meta


def _has_train_split(src: _Source, root: Path | None) -> bool:
    return src.has_train_split(root) if isinstance(src, _ImageFolder) else True


def _split_stats(
    src: _Source,
    split: str,
    images: np.ndarray,
    meta: dict[str, Any],
    entry: Path | None,
    *,
    load_train: Callable[[], tuple[np.ndarray, np.ndarray, DatasetInfo]],
    has_train: bool,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Constants if the source has them, else the train split's statistics (cached in meta)."""
    if src.constant_stats is not None:
        mean, std = src.constant_stats
        return tuple(mean), tuple(std)
    if split != "train" and has_train:
        info = load_train()[2]
        return info.mean, info.std
    if "mean" in meta and "std" in meta:
        return tuple(meta["mean"]), tuple(meta["std"])
    mean, std = channel_stats(images)
    if entry is not None:
        cache_lib.update_meta(entry, mean=list(mean), std=list(std))
    return mean, std
