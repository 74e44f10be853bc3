"""The persistent compilation cache: which folder is chosen, off where it cannot write, and that
a compiled program lands in it."""

import os
import subprocess
import sys

import jax
import pytest

from htakl_jax import compilation


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (compilation.ENV, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTAKL_JAX_CACHE_DIR", str(tmp_path / "xdg"))
    return monkeypatch


def test_cache_dir_precedence(clean_env, tmp_path):
    assert compilation.cache_dir() == str(tmp_path / "xdg" / "jax")
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
    assert compilation.cache_dir() == "/jax/own"
    clean_env.setenv(compilation.ENV, "/ours")
    assert compilation.cache_dir() == "/ours"
    assert compilation.cache_dir("/from/config") == "/from/config"
    clean_env.setenv(compilation.ENV, "off")
    assert compilation.cache_dir() is None
    assert compilation.cache_dir("/from/config") == "/from/config"
    assert compilation.cache_dir("off") is None


def test_unwritable_folder_turns_the_cache_off(clean_env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    before = jax.config.jax_compilation_cache_dir
    try:
        # A folder below a file can never be created (root included).
        assert compilation.enable_compilation_cache(str(blocker / "cache")) is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_compiled_program_is_written_to_the_cache(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import jax, jax.numpy as jnp\n"
        "from htakl_jax import compilation\n"
        f"assert compilation.enable_compilation_cache({str(cache)!r}) == {str(cache)!r}\n"
        "print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))\n"
    )
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    for _ in range(2):  # the second process reads what the first wrote
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    assert [p for p in cache.iterdir() if not p.name.startswith(".")], "nothing cached"
