"""The default configuration, `htakl_jax.defaults.get_config` (it lives in the package so that an
installed copy can train); this file keeps `--config configs/default.py` working."""

from htakl_jax.defaults import get_config

__all__ = ["get_config"]
