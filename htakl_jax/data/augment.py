"""Batch augmentation on device: random crop with zero padding, horizontal flip, normalisation.

Pure, jittable functions over a whole batch (no per-image Python work). Randomness contract, so
that results are reproducible from a key: `random_crop` draws offsets
`jax.random.randint(key, (B, 2), 0, 2 * pad + 1)` as (row, col) into the padded batch;
`random_flip` mirrors example b when `jax.random.bernoulli(key, 0.5, (B,))[b]`; `augment` splits its
key into (crop_key, flip_key) with `jax.random.split(key)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _check_batch(images: jax.Array, fn: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{fn}: images must be [B, H, W, C], got shape {images.shape}")


def random_crop(key: jax.Array, images_BHWC: jax.Array, *, pad: int = 4) -> jax.Array:
    """Zero-pad H and W by `pad` on each side, then crop each example back to [H, W] at its own
    random offset. Same shape and dtype as the input; pad=0 is the identity."""
    _check_batch(images_BHWC, "random_crop")
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"random_crop: pad must be a non-negative int, got {pad!r}")
    if pad == 0:
        return images_BHWC
    b, h, w, c = images_BHWC.shape
    # Zero padding in pixel space, as torchvision's RandomCrop(padding=4) on uint8 images.
    padded = jnp.pad(images_BHWC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets_B2 = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop_one(img_HWC: jax.Array, offset_2: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img_HWC, (offset_2[0], offset_2[1], 0), (h, w, c))

    return jax.vmap(crop_one)(padded, offsets_B2)


def random_flip(key: jax.Array, images_BHWC: jax.Array) -> jax.Array:
    """Mirror each example left-right (along W) with probability 1/2, independently."""
    _check_batch(images_BHWC, "random_flip")
    flip_B = jax.random.bernoulli(key, 0.5, (images_BHWC.shape[0],))
    return jnp.where(flip_B[:, None, None, None], images_BHWC[:, :, ::-1, :], images_BHWC)


def augment(
    key: jax.Array, images_BHWC: jax.Array, *, pad: int = 4, flip: bool = True
) -> jax.Array:
    """The paper's train augmentation: random crop (zero padding `pad`) then horizontal flip.

    images_BHWC: uint8 (or float) [B, H, W, C]; returns the same shape and dtype. Use pad=1 for
    8x8 digits. pad=0, flip=False is the identity.
    """
    crop_key, flip_key = jax.random.split(key)
    out = random_crop(crop_key, images_BHWC, pad=pad)
    return random_flip(flip_key, out) if flip else out


def normalize(
    images_BHWC: jax.Array, mean: Sequence[float] | jax.Array, std: Sequence[float] | jax.Array
) -> jax.Array:
    """uint8 [..., C] -> float32 (x / 255 - mean) / std; mean/std per channel in [0, 1] units."""
    mean_C = jnp.asarray(mean, jnp.float32)
    std_C = jnp.asarray(std, jnp.float32)
    c = images_BHWC.shape[-1]
    if mean_C.shape != (c,) or std_C.shape != (c,):
        raise ValueError(
            f"normalize: mean and std must have shape ({c},) to match the channel axis, got "
            f"{mean_C.shape} and {std_C.shape}"
        )
    x = images_BHWC.astype(jnp.float32) / 255.0
    return (x - mean_C) / std_C
