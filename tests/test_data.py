"""Tests for htakl_jax.data: sources (fixtures written here), cache, augmentation, batch order."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from htakl_jax import data
from htakl_jax.data import cache as cache_lib
from htakl_jax.data import sources

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# --------------------------------------------------------------------------- fixture writers


def _img(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _make_folder(
    root: Path, layout: dict[str, dict[str, int]]
) -> dict[tuple[str, str, int], np.ndarray]:
    """Write root/<split>/<class>/<i>.png (lossless) and return the pixels written."""
    written = {}
    for split, classes in layout.items():
        for cls, count in classes.items():
            for i in range(count):
                arr = _img(hash((split, cls, i)) % 2**32)
                _save(root / split / cls / f"{i:03d}.png", arr)
                written[(split, cls, i)] = arr
    return written


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _rows_to_nhwc_reference(rows: np.ndarray) -> np.ndarray:
    """Per-pixel loop: pixel (h, w, c) of row n is rows[n, c * 1024 + h * 32 + w]."""
    out = np.zeros((rows.shape[0], 32, 32, 3), np.uint8)
    for n in range(rows.shape[0]):
        for c in range(3):
            for h in range(32):
                for w in range(32):
                    out[n, h, w, c] = rows[n, c * 1024 + h * 32 + w]
    return out


def _stats_reference(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


# --------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_every_fifth_and_rgb():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    tr_x, tr_y, tr_info = data.load_split("digits", "train")
    te_x, te_y, te_info = data.load_split("digits", "test")
    assert tr_x.shape[1:] == (8, 8, 3) and tr_x.dtype == np.uint8 and tr_y.dtype == np.int32
    assert len(tr_y) + len(te_y) == len(bunch.target) == 1797
    # Reference split by a plain loop over the bundled order.
    seen = {c: 0 for c in range(10)}
    ref_tr, ref_te = [], []
    for i, t in enumerate(bunch.target):
        (ref_te if seen[t] % 5 == 4 else ref_tr).append(i)
        seen[t] += 1
    gray = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(te_x[..., 0], gray[ref_te])
    np.testing.assert_array_equal(tr_x[..., 2], gray[ref_tr])
    np.testing.assert_array_equal(te_y, bunch.target[ref_te])
    assert (tr_x[..., 0] == tr_x[..., 1]).all() and (tr_x[..., 1] == tr_x[..., 2]).all()
    assert tr_x.max() == 255
    # Both splits carry the train statistics.
    mean, std = _stats_reference(tr_x)
    np.testing.assert_allclose(tr_info.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(te_info.std, std, rtol=1e-12)
    assert te_info.class_names == tuple("0123456789") and te_info.image_size == (8, 8)


def test_digits_rejects_data_dir_and_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="no data_dir"):
        data.load_split("digits", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no split 'validation'"):
        data.load_split("digits", "validation")
    with pytest.raises(ValueError, match="unknown dataset source 'mnist'"):
        data.load_split("mnist", "train")


# --------------------------------------------------------------------------- CIFAR pickles


@pytest.fixture
def cifar10_pickle_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    batches = {}
    for i in range(1, 6):
        rows = _cifar_rows(2, seed=i)
        batches[f"data_batch_{i}"] = (rows, [i % 10, (i + 3) % 10])
    batches["test_batch"] = (_cifar_rows(3, seed=9), [9, 0, 4])
    for name, (rows, labels) in batches.items():
        _write_pickle(root / name, {b"batch_label": b"x", b"data": rows, b"labels": labels})
    names = [n.encode() for n in "plane car bird cat deer dog frog horse ship truck".split()]
    _write_pickle(root / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return root, batches


def test_cifar10_pickle_layout_labels_names_and_stats(cifar10_pickle_dir):
    root, batches = cifar10_pickle_dir
    x, y, info = data.load_split("cifar10_pickle", "train", data_dir=root.parent)  # parent ok
    order = [f"data_batch_{i}" for i in range(1, 6)]
    rows = np.concatenate([batches[k][0] for k in order])
    np.testing.assert_array_equal(x, _rows_to_nhwc_reference(rows))
    np.testing.assert_array_equal(y, sum((batches[k][1] for k in order), []))
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.flags.c_contiguous
    assert info.class_names[:3] == ("plane", "car", "bird") and info.num_classes == 10
    mean, std = _stats_reference(x)
    np.testing.assert_allclose(info.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(info.std, std, rtol=1e-12)
    tx, ty, tinfo = data.load_split("cifar10_pickle", "test", data_dir=root)
    np.testing.assert_array_equal(tx, _rows_to_nhwc_reference(batches["test_batch"][0]))
    np.testing.assert_array_equal(ty, [9, 0, 4])
    assert tinfo.mean == info.mean  # test split normalised with train statistics


class _RunsCode:
    """Unpickling this calls os.system: what a crafted data file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused(cifar10_pickle_dir, tmp_path):
    root, _ = cifar10_pickle_dir
    marker = tmp_path / "code_ran"
    rows = _cifar_rows(2, seed=1)
    _write_pickle(root / "test_batch", {b"data": rows, b"labels": [0, 1], b"x": _RunsCode(marker)})
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load global (posix|os)\.system"):
        data.load_split("cifar10_pickle", "test", data_dir=root)
    assert not marker.exists()
    # The same file without the payload loads (arrays, lists, bytes and ints are admitted), also
    # as a protocol-2 pickle (NumPy arrays and bytes rebuilt through admitted globals).
    clean = {b"data": rows, b"labels": [0, 1], b"batch_label": b"x"}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (root / "test_batch").write_bytes(pickle.dumps(clean, protocol=protocol))
        x, y, _ = data.load_split("cifar10_pickle", "test", data_dir=root)
        np.testing.assert_array_equal(x, _rows_to_nhwc_reference(rows))
        assert list(y) == [0, 1]


def test_cifar10_pickle_errors(cifar10_pickle_dir):
    root, _ = cifar10_pickle_dir
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_split("cifar10_pickle", "train", data_dir=root)
    _write_pickle(root / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="test_batch.*shape"):
        data.load_split("cifar10_pickle", "test", data_dir=root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_split("cifar10_pickle", "test", data_dir=root / "nope")


def test_cifar100_pickle_uses_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    train_rows, test_rows = _cifar_rows(4, 1), _cifar_rows(2, 2)
    common = {b"coarse_labels": [19, 19, 19, 19]}
    _write_pickle(root / "train", {b"data": train_rows, b"fine_labels": [5, 99, 0, 42], **common})
    _write_pickle(
        root / "test", {b"data": test_rows, b"fine_labels": [7, 8], b"coarse_labels": [1, 1]}
    )
    fine = [f"fine{i}".encode() for i in range(100)]
    _write_pickle(root / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    x, y, info = data.load_split("cifar100_pickle", "train", data_dir=root)
    np.testing.assert_array_equal(y, [5, 99, 0, 42])
    np.testing.assert_array_equal(x, _rows_to_nhwc_reference(train_rows))
    assert info.num_classes == 100 and info.class_names[99] == "fine99"
    tx, ty, _ = data.load_split("cifar100_pickle", "test", data_dir=root)
    np.testing.assert_array_equal(ty, [7, 8])
    np.testing.assert_array_equal(tx, _rows_to_nhwc_reference(test_rows))


# --------------------------------------------------------------------------- image folder


def test_image_folder_labels_follow_sorted_train_classes(tmp_path):
    root = tmp_path / "imgs"
    written = _make_folder(
        root, {"train": {"dog": 2, "ant": 3, "cat": 1}, "test": {"dog": 2, "ant": 1}}
    )
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    _save(root / "train" / "cat" / "gray.png", gray)  # mode "L" -> RGB

    x, y, info = data.load_split("image_folder", "train", data_dir=root, cache_dir=tmp_path / "c")
    assert info.class_names == ("ant", "cat", "dog") and x.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(x[0], written[("train", "ant", 0)])
    np.testing.assert_array_equal(x[3], written[("train", "cat", 0)])  # "000.png" < "gray.png"
    np.testing.assert_array_equal(x[4], np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(x[6], written[("train", "dog", 1)])

    tx, ty, tinfo = data.load_split("image_folder", "test", data_dir=root, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(ty, [0, 2, 2])  # dog keeps label 2 although test has 2 classes
    np.testing.assert_array_equal(tx[1], written[("test", "dog", 0)])
    mean, std = _stats_reference(x)
    np.testing.assert_allclose(tinfo.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(tinfo.std, std, rtol=1e-12)
    assert tinfo.num_classes == 3 and tinfo.image_size == (8, 8)


def test_image_folder_layout_errors(tmp_path):
    kw = {"cache_dir": tmp_path / "c"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_split("image_folder", "train", data_dir=tmp_path / "missing", **kw)
    with pytest.raises(ValueError, match="needs data_dir"):
        data.load_split("image_folder", "train", **kw)
    root = tmp_path / "r"
    _make_folder(root, {"train": {"a": 1}})
    with pytest.raises(FileNotFoundError, match=r"split folder .*test not found"):
        data.load_split("image_folder", "test", data_dir=root, **kw)
    _save(root / "flat" / "x.png", _img(0))
    with pytest.raises(ValueError, match="directly in it"):
        data.load_split("image_folder", "flat", data_dir=root, **kw)
    (root / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        data.load_split("image_folder", "empty", data_dir=root, **kw)
    _make_folder(root, {"odd": {"a": 1, "zebra": 1}})
    with pytest.raises(ValueError, match="zebra"):
        data.load_split("image_folder", "odd", data_dir=root, **kw)
    _save(root / "sizes" / "a" / "1.png", _img(1, size=10))
    _save(root / "sizes" / "a" / "0.png", _img(0, size=8))
    with pytest.raises(ValueError, match=r"1\.png has shape \(10, 10, 3\)"):
        data.load_split("image_folder", "sizes", data_dir=root, **kw)
    # check_split reports layout problems without decoding.
    data.check_split("image_folder", "train", data_dir=root)
    with pytest.raises(FileNotFoundError, match="test"):
        data.check_split("image_folder", "test", data_dir=root)


def test_corrupt_image_fails_by_default_and_skip_warns(tmp_path):
    root = tmp_path / "r"
    _make_folder(root, {"train": {"a": 2, "b": 1}})
    buf = root / "train" / "b" / "bad.jpg"
    _save(buf, _img(5, size=32), quality=90)
    buf.write_bytes(buf.read_bytes()[:200])  # truncated JPEG
    (root / "train" / "a" / "junk.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"junk\.png"):
        data.load_split("image_folder", "train", data_dir=root, use_cache=False)
    for attempt in range(2):  # the second load comes from the cache and must still warn
        with pytest.warns(UserWarning) as record:
            x, y, info = data.load_split(
                "image_folder", "train", data_dir=root, cache_dir=tmp_path / "c", skip_corrupt=True
            )
        messages = " ".join(str(r.message) for r in record)
        assert "bad.jpg" in messages and "junk.png" in messages, attempt
        assert x.shape == (3, 8, 8, 3)
        np.testing.assert_array_equal(y, [0, 0, 1])
        assert sorted(Path(p).name for p in info.skipped) == ["bad.jpg", "junk.png"]


# --------------------------------------------------------------------------- cache


def test_cache_hit_skips_decoding_and_changed_folder_redecodes(tmp_path, monkeypatch):
    root, cache = tmp_path / "r", tmp_path / "cache"
    _make_folder(root, {"train": {"a": 2, "b": 2}})
    x1, y1, info1 = data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and (entries[0] / "images.npy").is_file()

    def fail(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(sources, "_decode_image", fail)
    x2, y2, info2 = data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert info1 == info2

    # A new file changes the fingerprint: the loader must decode again (and hits `fail`).
    _save(root / "train" / "b" / "new.png", _img(77))
    with pytest.raises(AssertionError, match="decoded"):
        data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    monkeypatch.undo()
    x3, y3, _ = data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    assert x3.shape[0] == 5 and list(y3) == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(x3[4], _img(77))

    # Rewriting a file in place (same name) also invalidates the entry.
    _save(root / "train" / "a" / "000.png", _img(78))
    x4, _, _ = data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    np.testing.assert_array_equal(x4[0], _img(78))


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    root, cache = tmp_path / "r", tmp_path / "cache"
    _make_folder(root, {"train": {"a": 2}})
    real_save = np.save
    calls = []

    def dying_save(path, arr, **kw):
        calls.append(path)
        if len(calls) == 2:  # images written, process "killed" before labels
            raise KeyboardInterrupt
        real_save(path, arr, **kw)

    monkeypatch.setattr(cache_lib.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    monkeypatch.undo()
    assert list(cache.iterdir()) == []  # no half entry, no temp leftovers
    x, _, _ = data.load_split("image_folder", "train", data_dir=root, cache_dir=cache)
    assert x.shape == (2, 8, 8, 3) and len(list(cache.iterdir())) == 1


def test_use_cache_false_writes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "r"
    _make_folder(root, {"train": {"a": 1}})
    monkeypatch.setenv(cache_lib.CACHE_ENV_VAR, str(tmp_path / "envcache"))
    data.load_split("image_folder", "train", data_dir=root, use_cache=False)
    assert not (tmp_path / "envcache").exists()
    data.load_split("image_folder", "train", data_dir=root)  # default root from the env var
    assert len(list((tmp_path / "envcache").iterdir())) == 1


# --------------------------------------------------------------------------- Tiny ImageNet


def _make_tiny(root: Path, with_words: bool = True) -> dict[str, np.ndarray]:
    """3 wnids listed unsorted; constant-colour JPEGs (JPEG keeps flat colours almost exactly)."""
    wnids = ["n03", "n01", "n02"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    if with_words:
        (root / "words.txt").write_text("n01\tgoldfish\nn02\tsalamander, newt\nn03\tfrog\nn99\tx\n")
    colours = {"n01": (200, 10, 10), "n02": (10, 200, 10), "n03": (10, 10, 200)}
    for w in wnids:
        for i in range(2):
            img = np.broadcast_to(np.array(colours[w], np.uint8), (8, 8, 3)).copy()
            _save(root / "train" / w / "images" / f"{w}_{i}.JPEG", img, quality=95)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    _save(root / "train" / "n02" / "images" / "n02_9.JPEG", np.full((8, 8), 90, np.uint8))  # gray
    ann = []
    for k, w in enumerate(["n02", "n03", "n01", "n02"]):
        img = np.broadcast_to(np.array(colours[w], np.uint8), (8, 8, 3)).copy()
        _save(root / "val" / "images" / f"val_{k}.JPEG", img, quality=95)
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t7\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return colours


def test_tiny_imagenet_native_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    colours = _make_tiny(root)
    x, y, info = data.load_split(
        "tiny_imagenet", "train", data_dir=tmp_path, cache_dir=tmp_path / "c"
    )
    assert info.class_names == ("goldfish", "salamander, newt", "frog")
    assert x.shape == (7, 8, 8, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(x[0].reshape(-1, 3), np.tile(colours["n01"], (64, 1)), atol=4)
    gray = x[4].astype(int)  # n02_9 sorts after n02_0, n02_1
    assert np.abs(gray - 90).max() <= 2 and (gray[..., 0] == gray[..., 2]).all()
    vx, vy, vinfo = data.load_split("tiny_imagenet", "val", data_dir=root, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(vy, [1, 2, 0, 1])
    np.testing.assert_allclose(vx[1].reshape(-1, 3), np.tile(colours["n03"], (64, 1)), atol=4)
    assert vinfo.mean == info.mean and vinfo.split == "val"
    tx, ty, tinfo = data.load_split(
        "tiny_imagenet", "test", data_dir=root, cache_dir=tmp_path / "c"
    )
    np.testing.assert_array_equal(tx, vx)
    assert tinfo.split == "val"


def test_tiny_imagenet_without_words_and_errors(tmp_path):
    root = tmp_path / "t"
    _make_tiny(root, with_words=False)
    kw = {"cache_dir": tmp_path / "c"}
    _, _, info = data.load_split("tiny_imagenet", "val", data_dir=root, **kw)
    assert info.class_names == ("n01", "n02", "n03")
    with pytest.raises(ValueError, match="no split 'valid'"):
        data.load_split("tiny_imagenet", "valid", data_dir=root, **kw)
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="line 5"):
        data.load_split("tiny_imagenet", "val", data_dir=root, **kw)
    ann.unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        data.load_split("tiny_imagenet", "val", data_dir=root, **kw)
    shutil.rmtree(root / "train" / "n02")
    with pytest.raises(FileNotFoundError, match="n02"):
        data.load_split("tiny_imagenet", "train", data_dir=root, **kw)
    (root / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        data.check_split("tiny_imagenet", "train", data_dir=root)


# --------------------------------------------------------------------------- tfds


def _write_tfds_metadata(data_dir: Path, name: str, n: int, file_format: str) -> list[str]:
    """What `tfds build --file_format=...` leaves besides the record files (no TensorFlow)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    info = builder.info
    info.set_file_format(file_format, override=True)
    names = [f"class_{i}" for i in range(info.features["label"].num_classes)]
    info.features["label"].names = names
    template = lambda split: tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=name, split=split, filetype_suffix=file_format
    )
    splits = [
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template(s))
        for s in ("train", "test")
    ]
    info.set_splits(tfds.core.SplitDict(splits))
    Path(builder.data_path).mkdir(parents=True)
    info.write_to_directory(builder.data_path)
    return names


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_tfds_source_reads_array_record_without_tensorflow(tmp_path, name):
    import tensorflow_datasets as tfds

    tfds_dir = tmp_path / "tfds"
    names = _write_tfds_metadata(tfds_dir, name, n=6, file_format="array_record")
    policy = tfds.testing.MockPolicy.USE_FILES
    with tfds.testing.mock_data(num_examples=6, policy=policy, data_dir=str(tfds_dir)):
        x, y, info = data.load_split(name, "test", data_dir=tfds_dir, cache_dir=tmp_path / "c")
        reference = tfds.data_source(name, split="test", data_dir=str(tfds_dir), download=False)
        ref_x = np.stack([np.asarray(reference[i]["image"]) for i in range(6)])
        ref_y = np.array([int(reference[i]["label"]) for i in range(6)])
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)
    assert info.class_names == tuple(names) and info.num_classes == len(names)
    assert info.mean == sources.SOURCES[name].constant_stats[0]
    # The decoded split is cached: a second load outside the mock needs no tfds reader.
    x2, y2, _ = data.load_split(name, "test", data_dir=tfds_dir, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(x2, x)


def test_tfds_unprepared_or_tfrecord_data_explains_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("cifar100", "train", data_dir=tmp_path / "empty", cache_dir=tmp_path)
    msg = str(err.value)
    assert "tfds build cifar100 --file_format=array_record" in msg
    assert "cifar100_pickle" in msg and "cifar-100-python.tar.gz" in msg
    assert not (tmp_path / "empty").exists()  # no download/preparation attempted
    _write_tfds_metadata(tmp_path / "rec", "cifar10", n=2, file_format="tfrecord")
    with pytest.raises(ValueError, match="--file_format=array_record"):
        data.check_split("cifar10", "train", data_dir=tmp_path / "rec")


# --------------------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not (SHARED / "cifar10" / "train").is_dir(), reason="shared data absent")
def test_image_folder_on_shared_cifar10_subset(tmp_path):
    src = SHARED / "cifar10"
    for split in ("train", "test"):
        for cls in ("airplane", "truck"):
            files = sorted((src / split / cls).iterdir())[:2]
            (tmp_path / split / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, tmp_path / split / cls / f.name)
    x, y, info = data.load_split(
        "image_folder", "test", data_dir=tmp_path, cache_dir=tmp_path / "c"
    )
    assert x.shape == (4, 32, 32, 3) and info.class_names == ("airplane", "truck")
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    assert 0.0 < min(info.std) and max(info.mean) < 1.0


@pytest.mark.skipif(not (SHARED / "tiny-imagenet-200").is_dir(), reason="shared data absent")
def test_tiny_imagenet_on_shared_subset(tmp_path):
    src = SHARED / "tiny-imagenet-200"
    wnids = sorted((src / "wnids.txt").read_text().split())[:2]
    dst = tmp_path / "tiny-imagenet-200"
    (dst / "val" / "images").mkdir(parents=True)
    (dst / "wnids.txt").write_text("\n".join(wnids))
    shutil.copy(src / "words.txt", dst / "words.txt")
    for w in wnids:
        (dst / "train" / w / "images").mkdir(parents=True)
        for f in sorted((src / "train" / w / "images").iterdir())[:2]:
            shutil.copy(f, dst / "train" / w / "images" / f.name)
    lines = [
        ln
        for ln in (src / "val" / "val_annotations.txt").read_text().splitlines()
        if ln.split("\t")[1] in wnids
    ][:3]
    for ln in lines:
        shutil.copy(src / "val" / "images" / ln.split("\t")[0], dst / "val" / "images")
    (dst / "val" / "val_annotations.txt").write_text("\n".join(lines))
    x, y, info = data.load_split("tiny_imagenet", "val", data_dir=dst, cache_dir=tmp_path / "c")
    assert x.shape == (3, 64, 64, 3) and info.num_classes == 2
    np.testing.assert_array_equal(y, [wnids.index(ln.split("\t")[1]) for ln in lines])


# --------------------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def batch_u8():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 6, 5, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def jit_augment():
    return jax.jit(data.augment, static_argnames=("pad", "flip"))


def test_augment_identity_without_pad_and_flip(batch_u8, jit_augment):
    out = jit_augment(jax.random.key(3), batch_u8, pad=0, flip=False)
    assert out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, batch_u8)


def test_random_crop_matches_numpy_reference(batch_u8):
    pad = 2
    key = jax.random.key(11)
    out = np.asarray(jax.jit(data.random_crop, static_argnames="pad")(key, batch_u8, pad=pad))
    # Offsets as documented; crops by explicit loops over a zero-padded NumPy copy.
    offsets = np.asarray(jax.random.randint(key, (16, 2), 0, 2 * pad + 1))
    x = np.asarray(batch_u8)
    padded = np.zeros((16, 6 + 2 * pad, 5 + 2 * pad, 3), np.uint8)
    padded[:, pad : pad + 6, pad : pad + 5] = x
    for b in range(16):
        r, c = offsets[b]
        ref = np.array([[padded[b, r + i, c + j] for j in range(5)] for i in range(6)])
        np.testing.assert_array_equal(out[b], ref)
    # Per-example randomness: one key yields different offsets across the batch.
    assert len({tuple(o) for o in offsets}) > 1


def test_augment_output_is_a_padded_crop_possibly_mirrored(batch_u8, jit_augment):
    pad = 1
    x = np.asarray(batch_u8)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.asarray(jit_augment(jax.random.key(5), batch_u8, pad=pad, flip=True))
    flipped = 0
    for b in range(16):
        crops = [
            padded[b, r : r + 6, c : c + 5] for r in range(2 * pad + 1) for c in range(2 * pad + 1)
        ]
        plain = any((out[b] == cr).all() for cr in crops)
        mirrored = any((out[b] == cr[:, ::-1]).all() for cr in crops)
        assert plain or mirrored, b
        flipped += mirrored and not plain
    assert 0 < flipped < 16  # flips are per example, not per batch


def test_random_flip_is_a_mirror(batch_u8):
    out = np.asarray(data.random_flip(jax.random.key(2), batch_u8))
    x = np.asarray(batch_u8)
    mirrored = [(out[b] == x[b, :, ::-1]).all() for b in range(16)]
    same = [(out[b] == x[b]).all() for b in range(16)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert any(mirrored) and any(same)


def test_normalize_matches_float64_reference(batch_u8):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    out = data.normalize(batch_u8, mean, std)
    assert out.dtype == jnp.float32 and out.shape == batch_u8.shape
    ref = (np.asarray(batch_u8, np.float64) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6)


def test_augment_and_normalize_reject_bad_input(batch_u8):
    with pytest.raises(ValueError, match="shape"):
        data.normalize(batch_u8, (0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        data.augment(jax.random.key(0), batch_u8[0])
    with pytest.raises(ValueError, match="pad"):
        data.random_crop(jax.random.key(0), batch_u8, pad=-1)


# --------------------------------------------------------------------------- batch order


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    p = data.epoch_permutation(7, 3, 50)
    np.testing.assert_array_equal(np.sort(p), np.arange(50))
    np.testing.assert_array_equal(p, data.epoch_permutation(7, 3, 50))
    assert not np.array_equal(p, data.epoch_permutation(7, 4, 50))
    assert not np.array_equal(p, data.epoch_permutation(8, 3, 50))
    with pytest.raises(ValueError, match="seed"):
        data.epoch_permutation(-1, 0, 5)


def test_epoch_batches_drop_last_and_resume():
    batches = list(data.epoch_batches(1, 2, 23, 5))
    assert len(batches) == 4 == data.num_batches(23, 5) and all(len(b) == 5 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), data.epoch_permutation(1, 2, 23)[:20])
    full = list(data.epoch_batches(1, 2, 23, 5, drop_last=False))
    assert len(full) == 5 == data.num_batches(23, 5, drop_last=False) and len(full[-1]) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(full)), np.arange(23))
    resumed = list(data.epoch_batches(1, 2, 23, 5, start=2))
    assert len(resumed) == 2
    for a, b in zip(resumed, batches[2:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_process_slice_partitions_the_global_batch():
    batch = data.epoch_permutation(0, 0, 12)
    parts = [data.process_slice(batch, i, 3) for i in range(3)]
    assert all(len(p) == 4 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    with pytest.raises(ValueError, match="evenly"):
        data.process_slice(batch, 0, 5)
    with pytest.raises(ValueError, match="process_index"):
        data.process_slice(batch, 3, 3)


def test_eval_batches_cover_every_example_once():
    out = list(data.eval_batches(10, 4))
    assert len(out) == 3 and all(idx.shape == (4,) and m.shape == (4,) for idx, m in out)
    covered = np.concatenate([idx[m] for idx, m in out])
    np.testing.assert_array_equal(covered, np.arange(10))
    np.testing.assert_array_equal(out[-1][1], [True, True, False, False])
    assert (out[-1][0] < 10).all()  # padding indices stay gatherable
    assert list(data.eval_batches(0, 4)) == []


@pytest.mark.parametrize("name", ["cifar10_pickle", "tiny_imagenet"])
def test_data_dir_that_is_a_file_is_a_one_line_value_error(tmp_path, name):
    path = tmp_path / "file.txt"
    path.write_text("not a folder")
    with pytest.raises(
        ValueError, match=rf"{name}: data_dir .*file.txt is a file; it must be a folder"
    ):
        data.check_split(name, "train", data_dir=path)
