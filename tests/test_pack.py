"""Packed image folders (htakl_jax.data.pack, .packed): one file, the folder's arrays."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from htakl_jax import data
from htakl_jax.data import pack, packed, sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """root/<split>/<class>/<i>.png|jpg: random 8x8 pixels, PNG and JPEG alternating."""
    for split, classes in layout.items():
        for c, (cls, count) in enumerate(classes.items()):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([len(split), c, i])
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                name = f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"
                Image.fromarray(pixels).save(root / split / cls / name)


LAYOUT = {"train": {"cat": 3, "ant": 4, "dog": 2}, "test": {"ant": 2, "dog": 3}}


@pytest.fixture
def folder_and_file(tmp_path):
    root = tmp_path / "folder"
    _write_folder(root, LAYOUT)
    out = tmp_path / "set.npz"
    counts = pack.pack_image_folder(root, out)
    assert counts == {"test": 5, "train": 9}
    return root, out


@pytest.mark.parametrize("split", ["train", "test"])
def test_packed_file_decodes_to_the_folder_arrays(folder_and_file, tmp_path, split):
    root, out = folder_and_file
    kw = dict(cache_dir=tmp_path / "cache")
    x, y, info = data.load_split("image_folder", split, data_dir=root, **kw)
    px, py, pinfo = data.load_split("image_folder", split, data_dir=out, **kw)
    np.testing.assert_array_equal(px, x)
    np.testing.assert_array_equal(py, y)
    assert pinfo.class_names == info.class_names == ("ant", "cat", "dog")  # sorted train folders
    assert (pinfo.mean, pinfo.std, pinfo.image_size) == (info.mean, info.std, info.image_size)
    assert pinfo.source_path == str(out)
    # Labels by hand: sorted classes, sorted files within each class.
    expected = [
        i for i, c in enumerate(("ant", "cat", "dog")) for _ in range(LAYOUT[split].get(c, 0))
    ]
    np.testing.assert_array_equal(py, expected)


def test_packed_file_stores_each_file_once(folder_and_file):
    root, out = folder_and_file
    paths, labels, classes = sources.image_folder_files(root, "train")
    with packed.PackedFile(out) as f:
        assert f.classes == classes and set(f.splits) == {"train", "test"}
        part = f.split("train")
    assert part.names == tuple(f"{p.parent.name}/{p.name}" for p in paths)
    assert [part.encoded(i) for i in range(len(part))] == [p.read_bytes() for p in paths]
    np.testing.assert_array_equal(part.labels, labels)
    # Uncompressed: the data member is the concatenated files plus the .npy header.
    with zipfile.ZipFile(out) as z:
        info = z.getinfo("train.data.npy")
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.file_size - sum(p.stat().st_size for p in paths) <= 128


def test_packed_decode_is_cached_and_keyed_by_the_file(folder_and_file, tmp_path, monkeypatch):
    _, out = folder_and_file
    cache = tmp_path / "cache"
    x, _, _ = data.load_split("image_folder", "test", data_dir=out, cache_dir=cache)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(sources, "_decode_files", no_decode)
        x2, _, _ = data.load_split("image_folder", "test", data_dir=out, cache_dir=cache)
    np.testing.assert_array_equal(x2, x)
    os.utime(out, ns=(0, 0))  # a rewritten file (new mtime) is decoded again
    with monkeypatch.context() as m:
        m.setattr(sources, "_decode_files", no_decode)
        with pytest.raises(AssertionError, match="decoded again"):
            data.load_split("image_folder", "test", data_dir=out, cache_dir=cache)


def test_packed_file_errors_name_the_file(folder_and_file, tmp_path):
    _, out = folder_and_file
    with pytest.raises(FileNotFoundError, match=r"set.npz has no split 'val'.*\['test', 'train'\]"):
        data.check_split("image_folder", "val", data_dir=out)
    data.check_split("image_folder", "test", data_dir=out)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="garbage.npz is not a packed data file"):
        data.check_split("image_folder", "train", data_dir=garbage)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz is an .npz but not a packed data file"):
        data.load_split("image_folder", "train", data_dir=other, use_cache=False)
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        data.check_split("image_folder", "train", data_dir=tmp_path / "missing.npz")


def test_corrupt_image_in_a_packed_file_is_named(tmp_path):
    good = (tmp_path / "g.png").as_posix()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    encoded = [Path(good).read_bytes(), b"\xff\xd8 truncated jpeg"]
    out = tmp_path / "bad.npz"
    packed.write_packed(out, ["a"], {"train": (encoded, [0, 0], ["a/0.png", "a/1.jpg"])})
    with pytest.raises(
        ValueError, match=r"corrupt or unreadable image file .*bad.npz:train/a/1.jpg"
    ):
        data.load_split("image_folder", "train", data_dir=out, use_cache=False)
    with pytest.warns(UserWarning, match="bad.npz:train/a/1.jpg"):
        x, y, info = data.load_split(
            "image_folder", "train", data_dir=out, use_cache=False, skip_corrupt=True
        )
    assert x.shape == (1, 8, 8, 3) and info.skipped == (f"{out}:train/a/1.jpg",)


def test_pack_cli(folder_and_file, tmp_path, capsys):
    root, _ = folder_and_file
    out = tmp_path / "cli.npz"
    assert pack.main([str(root), str(out)]) == 0
    assert "test 5, train 9 images" in capsys.readouterr().out
    assert pack.main([str(tmp_path / "nowhere"), str(out)]) == 1
    assert "nowhere is not a folder" in capsys.readouterr().err
    assert pack.main([str(root), str(tmp_path / "x.zip")]) == 1
    assert "must end in .npz" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    assert pack.main([str(tmp_path / "flat"), str(out)]) == 1
    assert "no <split>/<class>/ image folders" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "cifar10" / "train").is_dir(), reason="shared data absent")
def test_packed_shared_cifar10_subset_equals_the_folder(tmp_path):
    """Real CIFAR-10 JPEGs: 3 classes x 30 train / 10 test images, linked into a folder."""
    for split, n in (("train", 30), ("test", 10)):
        for cls in ("airplane", "cat", "truck"):
            (tmp_path / "c10" / split / cls).mkdir(parents=True)
            for f in sorted((SHARED / "cifar10" / split / cls).iterdir())[:n]:
                os.symlink(f, tmp_path / "c10" / split / cls / f.name)
    pack.pack_image_folder(tmp_path / "c10", tmp_path / "c10.npz")
    for split in ("train", "test"):
        a = data.load_split("image_folder", split, data_dir=tmp_path / "c10", use_cache=False)
        b = data.load_split("image_folder", split, data_dir=tmp_path / "c10.npz", use_cache=False)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[0].shape[1:] == (32, 32, 3) and a[2].class_names == b[2].class_names
