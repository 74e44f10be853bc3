"""Surrogate-gradient spike functions (docs/method.md §2).

Every factory returns a :class:`Surrogate`: a frozen, hashable dataclass whose ``__call__`` is the
Heaviside step ``H(x) = 1 if x >= 0 else 0`` (note ``H(0) = 1``, in ``x``'s dtype) and whose
backward pass (``jax.custom_vjp``) is the surrogate derivative ``spike.grad(x)``. Because
surrogates compare equal by value, ``sigmoid(4.0)`` created twice is the same static argument to
``jax.jit`` (no recompilation) and a valid Flax module field.

Surrogate derivatives, ``x = h - v_threshold``:

- ``sigmoid(alpha=4)``:    ``alpha * sig(alpha x) * (1 - sig(alpha x))``
- ``atan(alpha=2)``:       ``alpha / 2 / (1 + (pi / 2 * alpha * x)^2)``
- ``rectangle(alpha=1)``:  ``1 / alpha`` where ``|x| < alpha / 2``, else ``0``
- ``triangle(alpha=1)``:   ``max(0, 1 / alpha - |x| / alpha^2)`` (unit area)
- ``superspike(alpha=10)``: ``1 / (1 + alpha |x|)^2`` (fast sigmoid)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

__all__ = [
    "Surrogate",
    "Sigmoid",
    "ATan",
    "Rectangle",
    "Triangle",
    "SuperSpike",
    "sigmoid",
    "atan",
    "rectangle",
    "triangle",
    "superspike",
    "heaviside",
    "SURROGATES",
    "get",
]


def heaviside(x: jax.Array) -> jax.Array:
    """Heaviside step with ``H(0) = 1``; same shape and dtype as ``x`` (no surrogate attached)."""
    x = jnp.asarray(x)
    return (x >= 0).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _spike(surrogate: Surrogate, x: jax.Array) -> jax.Array:
    return heaviside(x)


def _spike_fwd(surrogate: Surrogate, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return heaviside(x), x


def _spike_bwd(surrogate: Surrogate, x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * surrogate.grad(x).astype(g.dtype),)


_spike.defvjp(_spike_fwd, _spike_bwd)


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """Base class: Heaviside forward, ``self.grad`` backward. Subclasses define ``grad``."""

    alpha: float

    def __post_init__(self) -> None:
        alpha = float(self.alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(
                f"{type(self).__name__}: alpha must be a finite positive float, got {self.alpha!r}"
            )
        # Normalise to float so sigmoid(4) and sigmoid(4.0) hash equal (one jit cache entry).
        object.__setattr__(self, "alpha", alpha)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Spikes ``H(x)`` in ``{0, 1}`` (x's shape and dtype); gradient ``self.grad(x)``."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"spike input x must be a floating array, got dtype {x.dtype}")
        return _spike(self, x)

    def grad(self, x: jax.Array) -> jax.Array:
        """Surrogate derivative ``dH/dx`` evaluated elementwise at ``x`` (same shape and dtype)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Sigmoid(Surrogate):
    """Derivative of ``sig(alpha x)``; ``jax.nn.sigmoid`` keeps it finite (0) at large ``|x|``."""

    alpha: float = 4.0

    def grad(self, x: jax.Array) -> jax.Array:
        s = jax.nn.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)


@dataclasses.dataclass(frozen=True)
class ATan(Surrogate):
    """Derivative of ``atan(pi / 2 * alpha * x) / pi + 1/2``."""

    alpha: float = 2.0

    def grad(self, x: jax.Array) -> jax.Array:
        return self.alpha / 2 / (1 + jnp.square(math.pi / 2 * self.alpha * x))


@dataclasses.dataclass(frozen=True)
class Rectangle(Surrogate):
    """Box of width ``alpha`` and height ``1 / alpha`` centred on 0 (open interval)."""

    alpha: float = 1.0

    def grad(self, x: jax.Array) -> jax.Array:
        return jnp.where(jnp.abs(x) < self.alpha / 2, 1 / self.alpha, 0).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Triangle(Surrogate):
    """Triangle of half-width ``alpha`` and peak ``1 / alpha`` (unit area)."""

    alpha: float = 1.0

    def grad(self, x: jax.Array) -> jax.Array:
        return jnp.maximum(0, 1 / self.alpha - jnp.abs(x) / self.alpha**2).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class SuperSpike(Surrogate):
    """Fast-sigmoid derivative ``1 / (1 + alpha |x|)^2`` (Zenke & Ganguli's SuperSpike)."""

    alpha: float = 10.0

    def grad(self, x: jax.Array) -> jax.Array:
        return 1 / jnp.square(1 + self.alpha * jnp.abs(x))


def sigmoid(alpha: float = 4.0) -> Sigmoid:
    """Heaviside spike with the sigmoid surrogate derivative (SpikingJelly ``Sigmoid``)."""
    return Sigmoid(alpha)


def atan(alpha: float = 2.0) -> ATan:
    """Heaviside spike with the arctan surrogate derivative (SpikingJelly ``ATan``)."""
    return ATan(alpha)


def rectangle(alpha: float = 1.0) -> Rectangle:
    """Heaviside spike with the rectangular surrogate derivative (width ``alpha``)."""
    return Rectangle(alpha)


def triangle(alpha: float = 1.0) -> Triangle:
    """Heaviside spike with the triangular (unit-area) surrogate derivative."""
    return Triangle(alpha)


def superspike(alpha: float = 10.0) -> SuperSpike:
    """Heaviside spike with the SuperSpike / fast-sigmoid surrogate derivative."""
    return SuperSpike(alpha)


# The surrogates by name (the `model.neuron.surrogate` config key).
SURROGATES: dict[str, type[Surrogate]] = {
    "sigmoid": Sigmoid,
    "atan": ATan,
    "rectangle": Rectangle,
    "triangle": Triangle,
    "superspike": SuperSpike,
}


def get(name: str, alpha: float) -> Surrogate:
    """The surrogate registered as ``name`` in :data:`SURROGATES`, with ``alpha``.

    Raises ValueError for an unknown name or an invalid ``alpha``.
    """
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    return SURROGATES[name](alpha)
