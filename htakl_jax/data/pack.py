"""Pack an image-folder data set into one file: ``python -m htakl_jax.data.pack SRC_DIR OUT_FILE``.

SRC_DIR holds ``<split>/<class>/*.jpg|png`` (every split folder with class subfolders is packed);
OUT_FILE (``.npz``) then serves as ``config.data.data_dir`` of the ``image_folder`` source, which
decodes it into the same arrays and labels as the folder. The format is in
`htakl_jax.data.packed`; the listing is the source's own (`sources.image_folder_files`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from htakl_jax.data import packed, sources


def _split_names(src: Path) -> list[str]:
    """The split folders of `src` that hold at least one class folder."""
    return [
        d.name
        for d in sorted(src.iterdir())
        if d.is_dir() and not d.name.startswith(".") and any(c.is_dir() for c in d.iterdir())
    ]


def pack_image_folder(src_dir: str | os.PathLike, out_file: str | os.PathLike) -> dict[str, int]:
    """Packs every split of the image folder `src_dir` into `out_file`; returns images per split.

    Raises FileNotFoundError / ValueError naming the folder or file when the layout is wrong.
    """
    src, out = Path(src_dir), Path(out_file)
    if out.suffix != packed.SUFFIX:
        raise ValueError(f"OUT_FILE {out} must end in {packed.SUFFIX}")
    if not src.is_dir():
        raise FileNotFoundError(f"SRC_DIR {src} is not a folder")
    names = _split_names(src)
    if not names:
        raise ValueError(f"{src} has no <split>/<class>/ image folders")
    splits, classes = {}, None
    for split in names:
        paths, labels, classes = sources.image_folder_files(src, split)
        if not paths:
            raise ValueError(f"{src / split} holds no image files ({sources.IMAGE_EXTENSIONS})")
        encoded = [p.read_bytes() for p in paths]
        splits[split] = (encoded, labels, [f"{p.parent.name}/{p.name}" for p in paths])
    packed.write_packed(out, classes, splits)
    return {split: len(entry[1]) for split, entry in splits.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="image folder: SRC_DIR/<split>/<class>/*.jpg|png")
    parser.add_argument("out_file", help=f"packed file to write ({packed.SUFFIX})")
    args = parser.parse_args(argv)
    try:
        counts = pack_image_folder(args.src_dir, args.out_file)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = os.path.getsize(args.out_file) / 2**20
    per_split = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"wrote {args.out_file}: {per_split} images, {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
