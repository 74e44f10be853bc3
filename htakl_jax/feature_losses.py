"""Feature losses of the paper's comparison methods KDSNN, LaSNN and BKDSNN (docs/method.md §7).

Pure functions of student and teacher feature maps; the methods that combine them with the logit
losses, and their trainable parts, are in `htakl_jax.methods`. Shapes: feature maps `[B, H, W, C]`
(a student's already averaged over time), pooled features `[B, C]`. Following the BKDSNN code, a
"sum" reduction is the sum over every non-batch element divided by B. Teacher tensors carry no
gradient (`stop_gradient` here, so a caller cannot forget it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_same_shape(student: Array, teacher: Array, what: str) -> None:
    if jnp.shape(student) != jnp.shape(teacher):
        raise ValueError(
            f"{what}: student {jnp.shape(student)} and teacher {jnp.shape(teacher)} features "
            "must have the same shape"
        )


def feature_mse_sum(student: Array, teacher: Array) -> Array:
    """`sum_{all but batch} (student - teacher)^2 / B`, a scalar; [B, ...] each."""
    _check_same_shape(student, teacher, "feature_mse_sum")
    diff = student.astype(jnp.float32) - jax.lax.stop_gradient(teacher).astype(jnp.float32)
    return jnp.sum(jnp.square(diff)) / student.shape[0]


def attention_map(features_BHWC: Array) -> Array:
    """LaSNN's (attention transfer) map: `mean_c F^2` flattened to [B, H*W], each row scaled to
    unit L2 norm (rows of zeros stay zero)."""
    if jnp.ndim(features_BHWC) != 4:
        raise ValueError(
            f"attention_map needs [B, H, W, C] features, got {jnp.shape(features_BHWC)}"
        )
    x = features_BHWC.astype(jnp.float32)
    a_BP = jnp.mean(jnp.square(x), axis=-1).reshape(x.shape[0], -1)
    norm_B1 = jnp.linalg.norm(a_BP, axis=-1, keepdims=True)
    return a_BP / jnp.maximum(norm_B1, 1e-12)


def attention_transfer_loss(student_BHWC: Array, teacher_BHWC: Array) -> Array:
    """`mean_{b, hw} (attention_map(student) - attention_map(teacher))^2`, a scalar. Zero when the
    maps are equal, unchanged when either is scaled by c > 0, and at most 2 / (H * W)."""
    _check_same_shape(student_BHWC, teacher_BHWC, "attention_transfer_loss")
    a_s = attention_map(student_BHWC)
    a_t = attention_map(jax.lax.stop_gradient(teacher_BHWC))
    return jnp.mean(jnp.square(a_s - a_t))


def channel_mask(key: jax.Array, shape_BHWC: tuple[int, ...], mask_ratio: float) -> Array:
    """BKDSNN's blur mask [B, 1, 1, C] (float32): 0 where U(0, 1) < mask_ratio, else 1, one draw
    per example and channel, broadcast over space. No 1 / (1 - mask_ratio) rescaling."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
    b, c = shape_BHWC[0], shape_BHWC[-1]
    u = jax.random.uniform(key, (b, 1, 1, c))
    return (u >= mask_ratio).astype(jnp.float32)
