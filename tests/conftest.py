"""Test configuration: 4 virtual CPU devices for the data-parallel tests."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

# The persistent compilation cache (htakl_jax.compilation): programs compiled by one test process
# (or an earlier run of the suite) are read back by the others and by the CLI subprocesses, which
# inherit the folder through JAX_COMPILATION_CACHE_DIR.
from htakl_jax import compilation  # noqa: E402

_cache = compilation.enable_compilation_cache()
if _cache is not None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
