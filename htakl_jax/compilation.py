"""JAX's persistent compilation cache: compiled programs kept on disk across runs.

Every run, evaluation at a new T and test process would otherwise compile its programs from
scratch (tens of seconds for a ResNet step on a CPU). The cache is on by default, in a folder a
user can see and delete; where that folder cannot be created or written, it is off, with a warning.

Which folder, first match wins:
1. `setting` (`config.compilation_cache`): a path, or "off";
2. `$HTAKL_JAX_COMPILATION_CACHE`: a path, or "off";
3. `$JAX_COMPILATION_CACHE_DIR` (JAX's own variable, read by JAX at import);
4. `jax/` in the project's cache root (`$HTAKL_JAX_CACHE_DIR`, default `~/.cache/htakl_jax`).

JAX caches a program only when it took at least `jax_persistent_cache_min_compile_time_secs` to
compile (1 s by default; `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` sets it).
"""

from __future__ import annotations

import os

import jax
from absl import logging

from htakl_jax.data import cache as cache_lib

ENV = "HTAKL_JAX_COMPILATION_CACHE"
OFF = "off"


def default_cache_dir() -> str:
    """`jax/` in the project's cache root (`htakl_jax.data.cache.default_cache_root`:
    `$HTAKL_JAX_CACHE_DIR`, else `~/.cache/htakl_jax`), beside the decoded-data cache."""
    return str(cache_lib.default_cache_root() / "jax")


def cache_dir(setting: str = "") -> str | None:
    """The cache folder that `setting` and the environment select (module docstring), or None
    when the cache is off."""
    for choice in (setting, os.environ.get(ENV, ""), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        if choice:
            return None if choice == OFF else os.path.expanduser(choice)
    return default_cache_dir()


def _multi_process_cpu() -> bool:
    """Whether this is one process of a multi-process CPU job (checked without starting a
    backend when jax.distributed is not initialised)."""
    return (
        jax.distributed.is_initialized()
        and jax.process_count() > 1
        and jax.default_backend() == "cpu"
    )


def enable_compilation_cache(setting: str = "") -> str | None:
    """Points JAX's persistent compilation cache at `cache_dir(setting)` and returns that folder;
    None (the cache off) when it is off, the folder cannot be created or written, or this is a
    multi-process CPU run. Call before the first compilation (after jax.distributed starts)."""
    path = cache_dir(setting)
    if path is not None and _multi_process_cpu():
        # A program read back from the cache (written by an earlier 2-process run) hung in its
        # first cross-process collective (JAX 0.10.2, gloo): such runs compile their own.
        logging.info("compilation cache off: multi-process CPU run")
        path = None
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        logging.warning("compilation cache off: cannot write %s (%s)", path, e)
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path
