"""On-disk cache of decoded splits as .npy arrays, keyed by the source's path and file metadata.

An entry is a directory `<cache_root>/<label>-<key>/` holding `images.npy`, `labels.npy` and
`meta.json`. It is written into a temporary sibling directory and renamed into place, so a process
killed mid-write leaves no entry that a later load could mistake for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV_VAR = "HTAKL_JAX_CACHE_DIR"
# Bump when the decoded layout changes so that stale entries are never read.
_CACHE_FORMAT = 1


def default_cache_root() -> Path:
    """`$HTAKL_JAX_CACHE_DIR` if set, else `~/.cache/htakl_jax`."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "htakl_jax"


def tree_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of (relative path, size, mtime_ns) of every file under each path (files or folders).

    Content edits, additions, removals and renames all change it; directory mtimes alone would
    miss an edited file. Costs one stat per file (well under a second for 60k files).
    """
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        h.update(str(root.resolve()).encode())
        if root.is_file():
            st = root.stat()
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                rel = os.path.relpath(full, root)
                h.update(f"\n{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_key(**parts: Any) -> str:
    """Short stable hash of keyword parts (JSON-serialisable values)."""
    blob = json.dumps({"format": _CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_dir(cache_root: str | os.PathLike, label: str, key: str) -> Path:
    """Directory of the cache entry for `key`; `label` only makes the name readable."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return Path(cache_root).expanduser() / f"{safe}-{key}"


def read_entry(entry: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(images, labels, meta) of a complete entry (arrays memory-mapped read-only), or None."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    images = np.load(entry / "images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(entry / "labels.npy", mmap_mode="r", allow_pickle=False)
    return images, labels, meta


def write_entry(entry: Path, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Atomically create `entry` (no-op if a concurrent writer got there first)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        np.save(tmp / "images.npy", images, allow_pickle=False)
        np.save(tmp / "labels.npy", labels, allow_pickle=False)
        # meta.json last: read_entry treats its presence as "complete".
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
        try:
            os.replace(tmp, entry)
        except OSError:
            # Renaming onto a non-empty directory fails: another process wrote the same entry.
            if not (entry / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def update_meta(entry: Path, **fields: Any) -> None:
    """Atomically merge `fields` into an existing entry's meta.json."""
    meta_path = entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(fields)
    fd, tmp = tempfile.mkstemp(prefix=".meta-", dir=entry)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, sort_keys=True)
    os.replace(tmp, meta_path)
