"""The training state, the per-device steps and their compiled, data-parallel programs.

Step functions are pure and written per device; `parallel.data_parallel` makes them SPMD over the
'data' mesh axis (gradients and metrics reduced with pmean, BN statistics global). The host feeds
uint8 batches; augmentation (random crop + flip) and normalisation run inside the jitted step,
with randomness derived per example from (seed, phase, step, global example index), so the
result does not depend on the number of devices and a resumed run repeats an uninterrupted one.

`phase_program` builds everything one phase compiles (optimizer, init, step, eval) once per run;
the training loop (`htakl_jax.train`) and the evaluation (`htakl_jax.evaluate`) receive it.
jax.jit compiles at the first call, so building a program costs nothing until it runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from htakl_jax import data as data_lib
from htakl_jax import losses, parallel, runs
from htakl_jax.parallel import DATA_AXIS

# Separates the phases' augmentation streams.
PHASE_STREAMS = {"teacher": 0, "student": 1}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts optimizer updates (int32 scalar)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


# ----------------------------------------------------------------------------- optimizer, state


def weight_decay_mask(params: Any) -> Any:
    """True for conv/dense kernels; BN scales and biases are not decayed."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def make_optimizer(
    phase_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum, coupled L2 weight decay on kernels, linear warmup + cosine decay to 0.

    Returns (optax transformation, learning-rate schedule step -> lr).
    """
    total = phase_config.epochs * steps_per_epoch
    warmup = min(phase_config.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else phase_config.lr,
        peak_value=phase_config.lr,
        warmup_steps=warmup,
        decay_steps=max(total, 1),
        end_value=0.0,
    )
    tx = optax.chain(
        optax.add_decayed_weights(phase_config.weight_decay, mask=weight_decay_mask),
        optax.sgd(schedule, momentum=phase_config.momentum, nesterov=phase_config.nesterov),
    )
    return tx, schedule


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple
) -> TrainState:
    """Initial TrainState for images of shape `image_shape` [H, W, 3] (pure; jit/eval_shape it)."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


# ----------------------------------------------------------------------------- per-device steps


def preprocess(
    images_BHWC: jax.Array,
    *,
    seed: int,
    stream: int,
    step: jax.Array,
    pad: int,
    flip: bool,
    mean: Any,
    std: Any,
) -> jax.Array:
    """Random crop + flip, then normalisation: uint8 [B, H, W, 3] -> float32 [B, H, W, 3].

    Each example's key is fold_in(key(seed), stream, step, global index), where the global index
    counts across the 'data' axis, so the augmentation of an example is the same on any mesh.
    """
    b = images_BHWC.shape[0]
    offset = jax.lax.axis_index(DATA_AXIS) * b
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(offset + jnp.arange(b))
    one = functools.partial(data_lib.augment, pad=pad, flip=flip)
    augmented = jax.vmap(lambda k, im: one(k, im[None])[0])(keys, images_BHWC)
    return data_lib.normalize(augmented, mean, std)


def _accuracy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits_BC, -1) == labels_B).astype(jnp.float32))


def _update(state: TrainState, tx, grads, batch_stats) -> TrainState:
    grads = jax.lax.pmean(grads, DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def teacher_step(
    state: TrainState,
    images_BHWC: jax.Array,
    labels_B: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    augment: Callable[..., jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step of the ANN on label cross-entropy. images uint8 [B, H, W, 3], labels [B]."""
    x = augment(images_BHWC, step=state.step)

    def loss_fn(params):
        logits_BC, new_vars = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        loss = jnp.mean(losses.cross_entropy(logits_BC, labels_B))
        return loss, (logits_BC, new_vars["batch_stats"])

    (loss, (logits_BC, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    metrics = {"loss": loss, "accuracy": _accuracy(logits_BC, labels_B)}
    return _update(state, tx, grads, batch_stats), jax.lax.pmean(metrics, DATA_AXIS)


def distill_step(
    state: TrainState,
    teacher_variables: Any,
    images_BHWC: jax.Array,
    labels_B: jax.Array,
    *,
    student: nn.Module,
    teacher: nn.Module,
    tx: optax.GradientTransformation,
    augment: Callable[..., jax.Array],
    loss_kwargs: dict[str, Any],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step of the SNN on distillation_loss against the frozen teacher (eval-mode BN).

    Student logits are [T, B, C]; the loss and accuracy use their mean over T.
    """
    x = augment(images_BHWC, step=state.step)
    if loss_kwargs["method"] == "ce":
        teacher_logits_BC = None  # CE-only baseline: no teacher forward pass
    else:
        teacher_logits_BC = jax.lax.stop_gradient(teacher.apply(teacher_variables, x, train=False))

    def loss_fn(params):
        logits_TBC, new_vars = student.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        t_logits = jnp.zeros_like(logits_TBC[0]) if teacher_logits_BC is None else teacher_logits_BC
        loss, parts = losses.distillation_loss(logits_TBC, t_logits, labels_B, **loss_kwargs)
        return loss, (logits_TBC, parts, new_vars["batch_stats"])

    (loss, (logits_TBC, parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    metrics = {k: parts[k] for k in ("ce", "kd", "w_head", "w_tail")}
    metrics |= {"loss": loss, "accuracy": _accuracy(jnp.mean(logits_TBC, 0), labels_B)}
    return _update(state, tx, grads, batch_stats), jax.lax.pmean(metrics, DATA_AXIS)


def eval_step(
    variables: Any,
    images_BHWC: jax.Array,
    labels_B: jax.Array,
    mask_B: jax.Array,
    *,
    model: nn.Module,
    normalize: Callable[[jax.Array], jax.Array],
    timesteps: int | None = None,
) -> jax.Array:
    """Number of correct predictions among the valid (mask) examples, summed over devices.

    For a student, `timesteps` overrides its T at apply time (same parameters).
    """
    kwargs = {} if timesteps is None else {"timesteps": timesteps}
    logits = model.apply(variables, normalize(images_BHWC), train=False, **kwargs)
    if logits.ndim == 3:
        logits = jnp.mean(logits, 0)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels_B) & mask_B, dtype=jnp.int32)
    return jax.lax.psum(correct, DATA_AXIS)


# ----------------------------------------------------------------------------- compiled steps


def loss_kwargs_from(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """distillation_loss keyword arguments from config.student."""
    s = config.student
    return dict(
        method=s.method,
        alpha=s.alpha,
        temperature=s.temperature,
        mu=s.mu,
        head_ratio=s.head_ratio,
    )


def step_compiler_options(config: ml_collections.ConfigDict) -> dict[str, str] | None:
    """XLA options of a training step (`parallel.cpu_compiler_options`): on CPU, Eigen
    convolutions, plus the memory-optimised schedule when the model rematerialises: the default
    one keeps the output buffers of every LIF scan loop (T > neurons.MAX_UNROLLED_T) live from
    the start, which defeats remat. At T = 6 (unrolled LIFs) block remat with this schedule cuts
    a ResNet-20 step's peak by 62% against the remat-free step (benchmarks/memory.py). Other
    backends: None."""
    return parallel.cpu_compiler_options(memory_schedule=config.model.remat != "none")


def _augment_fn(config: ml_collections.ConfigDict, info: Any, phase: str) -> Callable:
    return functools.partial(
        preprocess,
        seed=config.seed,
        stream=PHASE_STREAMS[phase],
        pad=config.data.pad,
        flip=config.data.flip,
        mean=tuple(info.mean),
        std=tuple(info.std),
    )


def compile_teacher_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    config: ml_collections.ConfigDict,
    info: Any,
) -> Callable:
    """Jitted data-parallel `(state, images, labels) -> (state, metrics)`.

    `info` supplies the per-channel `mean` and `std` (a DatasetInfo). The state is donated.
    """
    fn = functools.partial(
        teacher_step, model=model, tx=tx, augment=_augment_fn(config, info, "teacher")
    )
    return parallel.data_parallel(
        fn, mesh, num_replicated=1, num_sharded=2, compiler_options=step_compiler_options(config)
    )


def compile_distill_step(
    student: nn.Module,
    teacher: nn.Module,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    config: ml_collections.ConfigDict,
    info: Any,
) -> Callable:
    """Jitted data-parallel `(state, teacher_variables, images, labels) -> (state, metrics)`."""
    fn = functools.partial(
        distill_step,
        student=student,
        teacher=teacher,
        tx=tx,
        augment=_augment_fn(config, info, "student"),
        loss_kwargs=loss_kwargs_from(config),
    )
    return parallel.data_parallel(
        fn, mesh, num_replicated=2, num_sharded=2, compiler_options=step_compiler_options(config)
    )


def compile_eval_step(
    model: nn.Module, mesh: jax.sharding.Mesh, info: Any, timesteps: int | None = None
) -> Callable:
    """Jitted data-parallel `(variables, images, labels, mask) -> correct count`."""
    normalize = functools.partial(data_lib.normalize, mean=tuple(info.mean), std=tuple(info.std))
    fn = functools.partial(eval_step, model=model, normalize=normalize, timesteps=timesteps)
    return parallel.data_parallel(
        fn,
        mesh,
        num_replicated=1,
        num_sharded=3,
        donate_first=False,
        compiler_options=parallel.cpu_compiler_options(),
    )


@dataclasses.dataclass(frozen=True)
class PhaseProgram:
    """Model, optimizer and compiled functions of one training phase, built once per run."""

    phase: str
    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    steps_per_epoch: int
    init_fn: Callable[[jax.Array], TrainState]  # key -> replicated initial state
    step_fn: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    eval_fn: Callable[..., jax.Array]  # at the model's own T

    @property
    def spiking(self) -> bool:
        return self.phase == "student"


def phase_program(
    phase: str,
    config: ml_collections.ConfigDict,
    *,
    mesh: jax.sharding.Mesh,
    info: Any,
    num_train: int,
) -> PhaseProgram:
    """The program of `phase` ('teacher' or 'student') for `num_train` training images of
    `info`'s shape, classes and statistics."""
    if phase not in runs.PHASES:
        raise ValueError(f"phase must be one of {runs.PHASES}, got {phase!r}")
    steps_per_epoch = num_train // config[phase].batch_size  # 0: checked before training
    spiking = phase == "student"
    model = runs.build_model(config, num_classes=info.num_classes, spiking=spiking)
    tx, schedule = make_optimizer(config[phase], steps_per_epoch)
    if spiking:
        teacher = runs.build_model(config, num_classes=info.num_classes, spiking=False)
        step_fn = compile_distill_step(model, teacher, tx, mesh, config, info)
    else:
        step_fn = compile_teacher_step(model, tx, mesh, config, info)
    init = functools.partial(init_state, model, tx, image_shape=tuple(info.image_size) + (3,))
    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    eval_fn = compile_eval_step(model, mesh, info)
    return PhaseProgram(phase, model, tx, schedule, steps_per_epoch, init_fn, step_fn, eval_fn)
