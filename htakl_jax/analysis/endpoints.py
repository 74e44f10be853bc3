"""Continuous endpoints of a student against its teacher, next to accuracy.

Accuracy moves in steps of 1/N and flips on examples near a decision boundary, so over seeds it
is a noisy measure of whether a distillation loss moved the student toward its teacher. On the
same images, three smooth ones:
- ``nll``: the student's test negative log-likelihood of the true labels (nats per image);
- ``teacher_agreement``: fraction of images where the student's top-1 is the teacher's top-1;
- ``kl_teacher_student``: KL(teacher || student) at temperature 1 (nats per image), the quantity
  forward-KL distillation minimises (at its own temperature).
A student's logits are its time-averaged output logits, as its prediction uses.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from htakl_jax import losses

__all__ = ["ENDPOINTS", "apply_in_batches", "endpoints_from_logits", "model_logits"]

# Endpoint name -> whether larger is better (for the direction of a paired difference).
ENDPOINTS = {
    "accuracy": True,
    "nll": False,
    "teacher_agreement": True,
    "kl_teacher_student": False,
}


def _logits(variables: Any, x: jax.Array, *, model: nn.Module, timesteps: int | None) -> jax.Array:
    kwargs = {"timesteps": timesteps} if getattr(model, "spiking", False) and timesteps else {}
    logits = model.apply(variables, x, train=False, **kwargs)
    return jnp.mean(logits, 0) if logits.ndim == 3 else logits  # [T, B, C] -> [B, C]


def apply_in_batches(
    fn: Any, variables: Any, images_NHWC: np.ndarray, *, batch_size: int
) -> np.ndarray:
    """``jax.jit(fn)(variables, batch)`` over batches of normalised images, concatenated as
    float32 NumPy (for evaluation-time outputs: logits, features)."""
    images = np.asarray(images_NHWC)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images_NHWC must be a non-empty [N, H, W, C] array, got {images.shape}")
    jitted = jax.jit(fn)
    parts = [
        np.asarray(jitted(variables, jnp.asarray(images[i : i + batch_size], jnp.float32)))
        for i in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def model_logits(
    model: nn.Module,
    variables: Any,
    images_NHWC: np.ndarray,
    *,
    timesteps: int | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Logits ``[N, C]`` (float32) of normalised images; a student's averaged over its T."""
    fn = functools.partial(_logits, model=model, timesteps=timesteps)
    return apply_in_batches(fn, variables, images_NHWC, batch_size=batch_size)


def endpoints_from_logits(
    student_logits_NC: np.ndarray, teacher_logits_NC: np.ndarray, labels_N: np.ndarray
) -> dict[str, float]:
    """Accuracy and the three endpoints (see the module docstring), means over the N images."""
    s, t = np.asarray(student_logits_NC), np.asarray(teacher_logits_NC)
    labels = np.asarray(labels_N)
    if s.ndim != 2 or s.shape != t.shape or labels.shape != s.shape[:1]:
        raise ValueError(
            f"need student and teacher logits [N, C] and labels [N]; got {s.shape}, {t.shape}, "
            f"{labels.shape}"
        )
    nll = losses.cross_entropy(jnp.asarray(s), jnp.asarray(labels))
    kl = losses.forward_kl(jnp.asarray(s), jnp.asarray(t), temperature=1.0)
    top1 = s.argmax(-1)
    return {
        "examples": int(s.shape[0]),
        "accuracy": float(np.mean(top1 == labels)),
        "nll": float(np.mean(np.asarray(nll, np.float64))),
        "teacher_agreement": float(np.mean(top1 == t.argmax(-1))),
        "kl_teacher_student": float(np.mean(np.asarray(kl, np.float64))),
    }
