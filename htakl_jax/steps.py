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

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from htakl_jax import data as data_lib
from htakl_jax import layers, losses, methods, parallel, runs
from htakl_jax.neurons import FEATURES
from htakl_jax.parallel import DATA_AXIS

# Separates the phases' augmentation streams, and the methods' random masks from both.
PHASE_STREAMS = {"teacher": 0, "student": 1}
METHOD_STREAM = 2


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `step` counts optimizer updates (int32 scalar).

    `method`: the distillation method's trainable parts (`methods.Method.parts`) as
    {'params', 'batch_stats', 'opt_state'}, updated by the same optimizer; {} for methods without.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    method: Any = flax.struct.field(default_factory=dict)

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
    """SGD with momentum, coupled L2 weight decay on kernels, linear warmup + cosine decay to 0;
    with `phase_config.grad_clip_norm` set, the loss gradient is first clipped to that global L2
    norm (the weight decay term is added after, as PyTorch's clip-then-step does).

    Returns (optax transformation, learning-rate schedule step -> lr).
    """
    total = phase_config.epochs * steps_per_epoch
    warmup = min(phase_config.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    if warmup:
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=phase_config.lr,
            warmup_steps=warmup,
            decay_steps=max(total, 1),
            end_value=0.0,
        )
    else:  # the same values; optax warns about a warmup of 0 steps
        schedule = optax.cosine_decay_schedule(phase_config.lr, decay_steps=max(total, 1))
    clip = phase_config.grad_clip_norm
    tx = optax.chain(
        *([optax.clip_by_global_norm(clip)] if clip is not None else []),
        optax.add_decayed_weights(phase_config.weight_decay, mask=weight_decay_mask),
        optax.sgd(schedule, momentum=phase_config.momentum, nesterov=phase_config.nesterov),
    )
    return tx, schedule


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple,
    method_init: Callable[[jax.Array], dict] | None = None,
) -> TrainState:
    """Initial TrainState for images of shape `image_shape` [H, W, 3] (pure; jit/eval_shape it).

    `method_init(key)`: the method's initial trainable variables ({'params', 'batch_stats'}).
    """
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    method = {} if method_init is None else method_init(jax.random.fold_in(key, 1))
    if method:
        method = method | {"opt_state": tx.init(method["params"])}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        method=method,
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


def check_batch(images_BHWC: jax.Array, labels_B: jax.Array, *rest_B: jax.Array) -> None:
    """At trace time: uint8 images [B, H, W, 3] and labels (and masks) [B] of one batch size, so
    a wrong batch fails with the shapes named instead of deep inside the model."""
    chex.assert_rank(images_BHWC, 4)
    chex.assert_type(images_BHWC, jnp.uint8)
    chex.assert_shape([labels_B, *rest_B], (images_BHWC.shape[0],))


def _accuracy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits_BC, -1) == labels_B).astype(jnp.float32))


def _update(
    state: TrainState, tx, grads, batch_stats, method_grads=None, method_stats=None
) -> tuple[TrainState, jax.Array]:
    """The optimizer step on the data-parallel mean of `grads`; also returns that mean's global
    L2 norm (before any clipping in `tx`)."""
    grads = jax.lax.pmean(grads, DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    method = state.method
    if method:
        method_grads = jax.lax.pmean(method_grads, DATA_AXIS)
        m_updates, m_opt = tx.update(method_grads, method["opt_state"], method["params"])
        params = optax.apply_updates(method["params"], m_updates)
        method = {"params": params, "batch_stats": method_stats, "opt_state": m_opt}
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        method=method,
    )
    return new_state, optax.tree.norm(grads)


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
    check_batch(images_BHWC, labels_B)
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
    new_state, grad_norm = _update(state, tx, grads, batch_stats)
    metrics = {"loss": loss, "accuracy": _accuracy(logits_BC, labels_B)}
    metrics = jax.lax.pmean(metrics, DATA_AXIS) | {"grad_norm": grad_norm}
    return new_state, metrics


def _teacher_outputs(teacher: nn.Module, variables: Any, x: jax.Array, method: Any) -> tuple:
    """Frozen-teacher logits [B, C] (None when the method reads none) and stage features."""
    if not method.uses_teacher:
        return None, ()
    if method.tap_kind is None:
        return jax.lax.stop_gradient(teacher.apply(variables, x, train=False)), ()
    logits, taps = teacher.apply(variables, x, train=False, features="rate", mutable=[FEATURES])
    return jax.lax.stop_gradient((logits, tuple(layers.stage_features(taps[FEATURES]))))


def _example_keys(seed: int, step: jax.Array, batch: int) -> jax.Array:
    """One key per example of the local batch [B], from (seed, method stream, step, global index):
    the same masks on any mesh and after a resume."""
    offset = jax.lax.axis_index(DATA_AXIS) * batch
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), METHOD_STREAM), step)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(batch))


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
    method: Any,
    seed: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step of the SNN on `method`'s loss (`methods.Method`) against the frozen teacher
    (eval-mode BN). Student logits are [T, B, C]; accuracy uses their mean over T."""
    check_batch(images_BHWC, labels_B)
    x = augment(images_BHWC, step=state.step)
    teacher_logits_BC, teacher_feats = _teacher_outputs(teacher, teacher_variables, x, method)
    keys = _example_keys(seed, state.step, x.shape[0]) if method.uses_keys else None
    mutable = ["batch_stats"] + ([FEATURES] if method.tap_kind else [])

    def loss_fn(params, method_params):
        logits_TBC, new_vars = student.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            features=method.tap_kind,
            mutable=mutable,
        )
        if teacher_logits_BC is not None:  # [T, B, C] against the teacher's [B, C]
            chex.assert_shape(logits_TBC, (None, *teacher_logits_BC.shape))
        student_feats = layers.stage_features(new_vars[FEATURES]) if method.tap_kind else ()
        inputs = methods.Inputs(
            logits_TBC, teacher_logits_BC, labels_B, student_feats, teacher_feats, keys
        )
        method_vars = {"params": method_params, "batch_stats": state.method.get("batch_stats")}
        loss, parts, method_stats = method.loss(method_vars, inputs, state.step)
        return loss, (logits_TBC, parts, new_vars["batch_stats"], method_stats)

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, aux), (grads, method_grads) = grad_fn(state.params, state.method.get("params", {}))
    logits_TBC, parts, batch_stats, method_stats = aux
    metrics = dict(parts) | {"loss": loss, "accuracy": _accuracy(jnp.mean(logits_TBC, 0), labels_B)}
    new_state, grad_norm = _update(state, tx, grads, batch_stats, method_grads, method_stats)
    # The norm is of the already averaged gradient: the same on every device.
    return new_state, jax.lax.pmean(metrics, DATA_AXIS) | {"grad_norm": grad_norm}


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
    check_batch(images_BHWC, labels_B, mask_B)
    kwargs = {} if timesteps is None else {"timesteps": timesteps}
    logits = model.apply(variables, normalize(images_BHWC), train=False, **kwargs)
    if logits.ndim == 3:
        logits = jnp.mean(logits, 0)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels_B) & mask_B, dtype=jnp.int32)
    return jax.lax.psum(correct, DATA_AXIS)


# ----------------------------------------------------------------------------- compiled steps


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
    method: methods.Method | None = None,
) -> Callable:
    """Jitted data-parallel `(state, teacher_variables, images, labels) -> (state, metrics)`;
    `method` defaults to `methods.get(config)`."""
    fn = functools.partial(
        distill_step,
        student=student,
        teacher=teacher,
        tx=tx,
        augment=_augment_fn(config, info, "student"),
        method=method or methods.get(config),
        seed=config.seed,
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


def _stage_shapes(model: nn.Module, image_shape: tuple, kind: str) -> list:
    """Shapes (ShapeDtypeStructs) of `model`'s stage features for one image, traced only."""

    def run(x):
        variables = model.init(jax.random.key(0), x, train=False)
        _, taps = model.apply(variables, x, train=False, features=kind, mutable=[FEATURES])
        return layers.stage_features(taps[FEATURES])

    return jax.eval_shape(run, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))


def _method_init(method: methods.Method, student, teacher, image_shape) -> Callable | None:
    """key -> the method's initial trainable variables, or None when it has none."""
    if method.parts is None:
        return None
    return functools.partial(
        method.init,
        student_features=_stage_shapes(student, image_shape, method.tap_kind),
        teacher_features=_stage_shapes(teacher, image_shape, "rate"),
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
    image_shape = tuple(info.image_size) + (3,)
    method_init = None
    if spiking:
        teacher = runs.build_model(config, num_classes=info.num_classes, spiking=False)
        method = methods.get(config, steps_per_epoch=max(steps_per_epoch, 1))
        step_fn = compile_distill_step(model, teacher, tx, mesh, config, info, method)
        method_init = _method_init(method, model, teacher, image_shape)
    else:
        step_fn = compile_teacher_step(model, tx, mesh, config, info)
    init = functools.partial(
        init_state, model, tx, image_shape=image_shape, method_init=method_init
    )
    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    eval_fn = compile_eval_step(model, mesh, info)
    return PhaseProgram(phase, model, tx, schedule, steps_per_epoch, init_fn, step_fn, eval_fn)
