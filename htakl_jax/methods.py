"""Distillation methods by name (`config.student.method`): the KL family and the paper's
comparison methods KDSNN, LaSNN and BKDSNN (docs/method.md §7).

A `Method` turns the student's per-timestep logits, the teacher's logits and, for the feature
methods, both networks' stage features (`Network(features=...)`, `layers.stage_features`) into the
training loss. Its trainable parts (KDSNN's adapter, BKDSNN's restoration block) are Flax modules
whose variables live in the train state's `method` entry: trained by the student's optimizer,
saved and restored with the state, and never part of the student (its saved variables, its
evaluation and its MAC counts).

- KL family ("ce", "fkl", "rkl", "symmetric", "fixed_ratio", "hta_kl"): `losses.distillation_loss`.
- "kdsnn": (1 - alpha) CE + alpha FKL + beta * sum/B (r(GAP(F_s)) - GAP(F_t))^2 on the last stage,
  r an adapter (Dense + BN, or 1x1 conv + BN on the maps with `spatial`). Sources: no official code;
  the reading of BKDSNN's re-implementation (medium-low confidence).
- "lasnn": (1 - alpha) CE + alpha FKL + beta * sum over stages of the attention-transfer loss (or
  sum/B MSE with `distance='mse'`), all stages from the start or progressively. Sources: no official
  code; "attention scheme" read as attention transfer (low confidence).
- "bkdsnn": CE + w_d * WSLD(tau) + alpha_b * sum/B (G(F_s * M) - F_t)^2 on the last stage, M a
  fresh per-example channel mask, G conv3x3-ReLU-conv3x3 (or FKL for WSLD with `logit='fkl'`).
  Source: the authors' code (high confidence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from htakl_jax import feature_losses, losses
from htakl_jax.layers import BN_EPSILON, BN_MOMENTUM, global_avg_pool
from htakl_jax.parallel import DATA_AXIS

KL_FAMILY = losses.METHODS
FEATURE_METHODS = ("kdsnn", "lasnn", "bkdsnn")
NAMES = KL_FAMILY + FEATURE_METHODS


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a method's loss reads: per-timestep student logits [T, B, C], teacher logits [B, C]
    (None for CE alone), labels [B], the stage features [B, H, W, C] of student (time-averaged)
    and teacher, and one PRNG key per example [B] (methods that draw masks)."""

    logits_TBC: jax.Array
    teacher_logits_BC: jax.Array | None
    labels_B: jax.Array
    student_features: Sequence[jax.Array] = ()
    teacher_features: Sequence[jax.Array] = ()
    example_keys_B: jax.Array | None = None


# loss(method_variables, inputs, step) -> (loss, metrics, new method batch_stats)
LossFn = Callable[[dict, Inputs, jax.Array], tuple[jax.Array, dict[str, jax.Array], Any]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A configured method. `tap_kind`: the student features it reads (None: logits only);
    `parts`: its trainable Flax module (None: none); `uses_keys`: it draws random masks."""

    name: str
    loss: LossFn
    uses_teacher: bool = True
    tap_kind: str | None = None
    parts: nn.Module | None = None
    uses_keys: bool = False

    def init(self, key: jax.Array, student_features: Sequence, teacher_features: Sequence) -> dict:
        """Initial variables {'params', 'batch_stats'} of the trainable parts ({} without), from
        the features' shapes (arrays or ShapeDtypeStructs)."""
        if self.parts is None:
            return {}
        s = jnp.zeros(student_features[-1].shape, jnp.float32)
        t = jnp.zeros(teacher_features[-1].shape, jnp.float32)
        variables = self.parts.init(key, s, t, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# ----------------------------------------------------------------------------- trainable parts


class KDSNNAdapter(nn.Module):
    """r: Dense(C_s -> C_t) + BN on pooled features [B, C], or (spatial) 1x1 conv + BN on the
    maps [B, H, W, C]. Called with (student, teacher) features; returns r(student)."""

    spatial: bool = False
    bn_axis_name: str | None = DATA_AXIS

    @nn.compact
    def __call__(self, f_s: jax.Array, f_t: jax.Array, *, train: bool) -> jax.Array:
        c_t = f_t.shape[-1]
        layer = nn.Conv(c_t, (1, 1), use_bias=False) if self.spatial else nn.Dense(c_t)
        norm = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            axis_name=self.bn_axis_name if train else None,
        )
        return norm(layer(f_s.astype(jnp.float32)))


class RestorationBlock(nn.Module):
    """BKDSNN's G: Conv3x3(C_t, padding 1, bias) - ReLU - Conv3x3(C_t); maps [B, H, W, C] (the
    student's, masked) to the teacher's channel count."""

    @nn.compact
    def __call__(self, f_s: jax.Array, f_t: jax.Array, *, train: bool) -> jax.Array:
        del train
        c_t = f_t.shape[-1]
        y = nn.relu(nn.Conv(c_t, (3, 3), padding=((1, 1), (1, 1)))(f_s.astype(jnp.float32)))
        return nn.Conv(c_t, (3, 3), padding=((1, 1), (1, 1)))(y)


# ----------------------------------------------------------------------------- losses


def _kl_objective(config: ml_collections.ConfigDict, method: str, inputs: Inputs) -> tuple:
    """(1 - alpha) CE + alpha KD of the KL family, and its metrics."""
    s = config.student
    teacher = inputs.teacher_logits_BC
    if teacher is None:  # CE alone: no teacher forward pass; the KD term is not computed
        teacher = jnp.zeros_like(inputs.logits_TBC[0])
    teacher = jax.lax.stop_gradient(teacher)  # the teacher is frozen
    return losses.distillation_loss(
        inputs.logits_TBC,
        teacher,
        inputs.labels_B,
        method=method,
        alpha=s.alpha,
        temperature=s.temperature,
        mu=s.mu,
        head_ratio=s.head_ratio,
        weight_temperature=s.weight_temperature,
    )


def _kl_family(config: ml_collections.ConfigDict, name: str) -> Method:
    def loss(variables, inputs, step):
        del variables, step
        total, metrics = _kl_objective(config, name, inputs)
        return total, {k: metrics[k] for k in ("ce", "kd", "w_head", "w_tail")}, {}

    return Method(name, loss, uses_teacher=name != "ce")


def _with_feature_term(metrics: dict, logit_total: jax.Array, feat: jax.Array) -> tuple:
    parts = {k: metrics[k] for k in ("ce", "kd", "w_head", "w_tail")}
    return logit_total + feat, parts | {"feat": feat}


def _kdsnn(config: ml_collections.ConfigDict, bn_axis_name: str | None) -> Method:
    k = config.kdsnn
    # 'if_needed' (BKDSNN's re-implementation): no adapter, as student and teacher share widths.
    adapter = KDSNNAdapter(spatial=k.spatial, bn_axis_name=bn_axis_name)
    parts = None if k.adapter == "if_needed" else adapter

    def loss(variables, inputs, step):
        del step
        f_s, f_t = inputs.student_features[-1], inputs.teacher_features[-1]
        if not k.spatial:
            f_s, f_t = global_avg_pool(f_s), global_avg_pool(f_t)
        if parts is None:
            r_s, new_stats = f_s, {}
        else:
            r_s, updated = parts.apply(variables, f_s, f_t, train=True, mutable=["batch_stats"])
            new_stats = updated["batch_stats"]
        logit_total, metrics = _kl_objective(config, "fkl", inputs)
        total, parts_out = _with_feature_term(
            metrics, logit_total, k.beta * feature_losses.feature_mse_sum(r_s, f_t)
        )
        return total, parts_out, new_stats

    return Method("kdsnn", loss, tap_kind=k.features, parts=parts)


def lasnn_stage_weights(
    config: ml_collections.ConfigDict, num_stages: int, step: jax.Array, steps_per_epoch: int
) -> jax.Array:
    """Per-stage weight [L]: all 1 ('joint'), or stage l from epoch l * E_w / L ('progressive')."""
    la = config.lasnn
    if la.schedule == "joint":
        return jnp.ones(num_stages)
    start_step = jnp.arange(num_stages) * la.warmup_epochs / num_stages * steps_per_epoch
    return (step >= start_step).astype(jnp.float32)


def _lasnn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Method:
    la = config.lasnn
    distance = (
        feature_losses.attention_transfer_loss
        if la.distance == "attention"
        else feature_losses.feature_mse_sum
    )
    beta = la.beta if la.beta is not None else (1000.0 if la.distance == "attention" else 2e-3)

    def loss(variables, inputs, step):
        del variables
        pairs = list(zip(inputs.student_features, inputs.teacher_features, strict=True))
        terms = jnp.stack([distance(s, t) for s, t in pairs])
        weights = lasnn_stage_weights(config, len(pairs), step, steps_per_epoch)
        feat = beta * jnp.sum(weights * terms)
        logit_total, metrics = _kl_objective(config, "fkl", inputs)
        total, parts_out = _with_feature_term(metrics, logit_total, feat)
        return total, parts_out, {}

    return Method("lasnn", loss, tap_kind=la.features)


def _bkdsnn_masks(keys_B: jax.Array, shape_BHWC: tuple, mask_ratio: float) -> jax.Array:
    """One channel mask [1, 1, C] per example, from that example's key: [B, 1, 1, C]."""
    one = (1,) + tuple(shape_BHWC[1:])
    return jax.vmap(lambda k: feature_losses.channel_mask(k, one, mask_ratio)[0])(keys_B)


def _bkdsnn(config: ml_collections.ConfigDict) -> Method:
    b = config.bkdsnn
    parts = RestorationBlock()

    def loss(variables, inputs, step):
        del step
        f_s, f_t = inputs.student_features[-1], inputs.teacher_features[-1]
        if b.use_clip:
            f_t = f_t / jnp.max(f_t) * jax.lax.stop_gradient(jnp.max(f_s))
        masked = f_s * _bkdsnn_masks(inputs.example_keys_B, f_s.shape, b.mask_ratio)
        restored = parts.apply(variables, masked, f_t, train=True)
        feat = b.alpha * feature_losses.feature_mse_sum(restored, f_t)
        if b.logit == "fkl":
            logit_total, metrics = _kl_objective(config, "fkl", inputs)
            total, parts_out = _with_feature_term(metrics, logit_total, feat)
            return total, parts_out, {}
        logits_BC = jnp.mean(inputs.logits_TBC, 0)
        ce = jnp.mean(losses.cross_entropy(logits_BC, inputs.labels_B))
        kd = jnp.mean(
            losses.wsld(
                logits_BC, inputs.teacher_logits_BC, inputs.labels_B, temperature=b.temperature
            )
        )
        zero = jnp.zeros((), ce.dtype)
        parts_out = {"ce": ce, "kd": kd, "w_head": zero, "w_tail": zero, "feat": feat}
        return ce + b.wsld_weight * kd + feat, parts_out, {}

    return Method("bkdsnn", loss, tap_kind=b.features, parts=parts, uses_keys=True)


def get(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int = 1,
    bn_axis_name: str | None = DATA_AXIS,
) -> Method:
    """The method `config.student.method`, configured by its config block. `steps_per_epoch`
    places LaSNN's progressive schedule; `bn_axis_name`: the mesh axis of the adapter's BatchNorm
    (None outside `shard_map`)."""
    name = config.student.method
    if name in KL_FAMILY:
        return _kl_family(config, name)
    if name == "kdsnn":
        return _kdsnn(config, bn_axis_name)
    if name == "lasnn":
        return _lasnn(config, steps_per_epoch)
    if name == "bkdsnn":
        return _bkdsnn(config)
    raise ValueError(f"unknown distillation method {name!r}; choose one of {NAMES}")
