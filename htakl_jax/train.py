"""Teacher training, HTA-KL distillation and evaluation: step functions and one training loop.

Step functions are pure, written per device and made data-parallel by `parallel.data_parallel`
(gradients and metrics reduced over the 'data' mesh axis, BN statistics global). The host feeds
uint8 batches; augmentation (random crop + flip) and normalisation run inside the jitted step, with
randomness derived per example from (seed, phase, step, global example index), so the result does
not depend on the number of devices and a resumed run repeats an uninterrupted one exactly.

Workdir layout: WORKDIR/{teacher,student}/{checkpoints,best}/<step>/ (Orbax), WORKDIR/<phase>/
metrics.jsonl (one JSON object per epoch, process 0) and WORKDIR/results.json (evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from htakl_jax import checkpoint as ckpt_lib
from htakl_jax import config_validation, losses, parallel, surrogate
from htakl_jax import data as data_lib
from htakl_jax.models import get_model
from htakl_jax.parallel import DATA_AXIS

PHASES = ("teacher", "student")
_PHASE_STREAM = {"teacher": 0, "student": 1}  # separates the phases' augmentation streams
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Preempted(Exception):
    """Raised after SIGTERM once the current state has been checkpointed."""


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


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A split in host memory: images uint8 [N, H, W, 3], labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------- model and optimizer


def remat_mode(config: ml_collections.ConfigDict, *, spiking: bool) -> str:
    """`model.remat` of the teacher (spiking=False) or student; model.neuron.remat=True is the
    older spelling of 'neuron' (students only; 'block' covers it)."""
    if config.model.remat == "none" and spiking and config.model.neuron.remat:
        return "neuron"
    return config.model.remat


def build_model(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    spiking: bool,
    bn_axis_name: str | None = DATA_AXIS,
) -> nn.Module:
    """The configured teacher (spiking=False) or student (spiking=True) Flax module."""
    kwargs: dict[str, Any] = {}
    if spiking:
        n = config.model.neuron
        kwargs = dict(
            tau=n.tau,
            v_threshold=n.v_threshold,
            v_reset=n.v_reset,
            decay_input=n.decay_input,
            detach_reset=n.detach_reset,
            surrogate=getattr(surrogate, n.surrogate)(n.surrogate_alpha),
        )
    remat = remat_mode(config, spiking=spiking)
    return get_model(
        config.model.name,
        num_classes=num_classes,
        spiking=spiking,
        timesteps=config.student.timesteps,
        width_mult=config.model.width_mult,
        dtype=_DTYPES[config.model.dtype],
        bn_axis_name=bn_axis_name,
        remat=remat,
        **kwargs,
    )


def model_meta(config: ml_collections.ConfigDict, *, num_classes: int, spiking: bool) -> dict:
    """Description stored with checkpoints and checked when a teacher is restored."""
    return {
        "name": config.model.name,
        "width_mult": float(config.model.width_mult),
        "num_classes": int(num_classes),
        "spiking": spiking,
        "timesteps": int(config.student.timesteps) if spiking else None,
    }


def weight_decay_mask(params: Any) -> Any:
    """True for conv/dense kernels; BN scales and biases are not decayed."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def make_optimizer(phase_config: ml_collections.ConfigDict, steps_per_epoch: int):
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


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape):
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
    images: jax.Array,
    labels: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    augment: Callable[..., jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step of the ANN on label cross-entropy. images uint8 [B, H, W, 3], labels [B]."""
    x = augment(images, step=state.step)

    def loss_fn(params):
        logits, new_vars = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        loss = jnp.mean(losses.cross_entropy(logits, labels))
        return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": _accuracy(logits, labels)}
    return _update(state, tx, grads, batch_stats), jax.lax.pmean(metrics, DATA_AXIS)


def distill_step(
    state: TrainState,
    teacher_variables: Any,
    images: jax.Array,
    labels: jax.Array,
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
    x = augment(images, step=state.step)
    if loss_kwargs["method"] == "ce":
        teacher_logits = None  # CE-only baseline: no teacher forward pass
    else:
        teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_variables, x, train=False))

    def loss_fn(params):
        logits_TBC, new_vars = student.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        t_logits = jnp.zeros_like(logits_TBC[0]) if teacher_logits is None else teacher_logits
        loss, parts = losses.distillation_loss(logits_TBC, t_logits, labels, **loss_kwargs)
        return loss, (logits_TBC, parts, new_vars["batch_stats"])

    (loss, (logits_TBC, parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    metrics = {k: parts[k] for k in ("ce", "kd", "w_head", "w_tail")}
    metrics |= {"loss": loss, "accuracy": _accuracy(jnp.mean(logits_TBC, 0), labels)}
    return _update(state, tx, grads, batch_stats), jax.lax.pmean(metrics, DATA_AXIS)


def eval_step(
    variables: Any,
    images: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    model: nn.Module,
    normalize: Callable[[jax.Array], jax.Array],
    timesteps: int | None = None,
) -> jax.Array:
    """Number of correct predictions among the valid (mask) examples, summed over devices.

    For a student, `timesteps` overrides its T at apply time (same parameters).
    """
    kwargs = {} if timesteps is None else {"timesteps": timesteps}
    logits = model.apply(variables, normalize(images), train=False, **kwargs)
    if logits.ndim == 3:
        logits = jnp.mean(logits, 0)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & mask, dtype=jnp.int32)
    return jax.lax.psum(correct, DATA_AXIS)


# ----------------------------------------------------------------------------- compiled steps


def _augment_fn(config: ml_collections.ConfigDict, info: Any, phase: str):
    return functools.partial(
        preprocess,
        seed=config.seed,
        stream=_PHASE_STREAM[phase],
        pad=config.data.pad,
        flip=config.data.flip,
        mean=tuple(info.mean),
        std=tuple(info.std),
    )


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


def step_compiler_options(
    config: ml_collections.ConfigDict, *, spiking: bool
) -> dict[str, str] | None:
    """XLA options of a training step (`parallel.cpu_compiler_options`): on CPU, Eigen
    convolutions, plus the memory-optimised schedule when the model rematerialises: the default
    one keeps the output buffers of every LIF scan loop (T > neurons._MAX_UNROLLED_T) live from
    the start, which defeats remat. At T = 6 (unrolled LIFs) block remat with this schedule cuts
    a ResNet-20 step's peak by 62% against the remat-free step (benchmarks/memory.py). Other
    backends: None."""
    remat = remat_mode(config, spiking=spiking) != "none"
    return parallel.cpu_compiler_options(memory_schedule=remat)


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
        fn,
        mesh,
        num_replicated=1,
        num_sharded=2,
        compiler_options=step_compiler_options(config, spiking=False),
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
        fn,
        mesh,
        num_replicated=2,
        num_sharded=2,
        compiler_options=step_compiler_options(config, spiking=True),
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


class _Stats(NamedTuple):
    mean: tuple[float, ...]
    std: tuple[float, ...]


class PhaseProgram(NamedTuple):
    """Model, optimizer and compiled functions of one training phase."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: Callable[[int], Any]
    init_fn: Callable[[jax.Array], TrainState]  # key -> replicated initial state
    step_fn: Callable[..., Any]
    eval_fn: Callable[..., jax.Array]


def _stats(info: Any) -> _Stats:
    return _Stats(tuple(float(m) for m in info.mean), tuple(float(s) for s in info.std))


# Programs are cached on (config as JSON, shapes, mesh) so that repeated phases in one process
# (resume, tests, eval after training) reuse the jitted functions instead of recompiling.
@functools.lru_cache(maxsize=16)
def _phase_program(
    phase: str,
    config_json: str,
    num_classes: int,
    steps_per_epoch: int,
    image_shape: tuple[int, ...],
    stats: _Stats,
    mesh: jax.sharding.Mesh,
) -> PhaseProgram:
    config = ml_collections.ConfigDict(json.loads(config_json))
    spiking = phase == "student"
    model = build_model(config, num_classes=num_classes, spiking=spiking)
    tx, schedule = make_optimizer(config[phase], steps_per_epoch)
    if spiking:
        teacher = build_model(config, num_classes=num_classes, spiking=False)
        step_fn = compile_distill_step(model, teacher, tx, mesh, config, stats)
    else:
        step_fn = compile_teacher_step(model, tx, mesh, config, stats)
    init = functools.partial(init_state, model, tx, image_shape=image_shape)
    init_fn = jax.jit(init, out_shardings=parallel.replicated(mesh))
    eval_fn = _eval_program(config_json, num_classes, spiking, None, stats, mesh)
    return PhaseProgram(model, tx, schedule, init_fn, step_fn, eval_fn)


@functools.lru_cache(maxsize=32)
def _eval_program(
    config_json: str,
    num_classes: int,
    spiking: bool,
    timesteps: int | None,
    stats: _Stats,
    mesh: jax.sharding.Mesh,
) -> Callable[..., jax.Array]:
    config = ml_collections.ConfigDict(json.loads(config_json))
    model = build_model(config, num_classes=num_classes, spiking=spiking)
    if spiking and timesteps == config.student.timesteps:
        timesteps = None  # the model's own T: one program for training-time and final eval
    return compile_eval_step(model, mesh, stats, timesteps=timesteps)


def evaluate(eval_fn: Callable, variables: Any, ds: Dataset, *, mesh, batch_size: int) -> float:
    """Accuracy of `eval_fn` over every example of `ds` exactly once (padded last batch)."""
    correct = 0
    for idx, mask in data_lib.eval_batches(len(ds), batch_size):
        local_idx, local_mask = _process_part(idx), _process_part(mask)
        batch = parallel.global_batch(
            (ds.images[local_idx], ds.labels[local_idx], local_mask), mesh
        )
        correct += int(eval_fn(variables, *batch))
    return correct / len(ds)


def _process_part(global_rows: np.ndarray) -> np.ndarray:
    return data_lib.process_slice(global_rows, jax.process_index(), jax.process_count())


# ----------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGTERM only sets a flag (polled by the loop); restored afterwards."""
    received = []

    def handler(signum, frame):
        del frame
        logging.warning("received signal %d: saving a checkpoint, then exiting", signum)
        received.append(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, never set
        yield lambda: False
        return
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _any_process(flag: bool) -> bool:
    """Whether `flag` is True on any process (a blocking host all-gather)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _summarise(window: list[dict[str, jax.Array]], first_step: int, epoch: int) -> dict[str, float]:
    """Means of a window of step metrics; raises FloatingPointError at the first bad loss."""
    host = jax.device_get(window)
    for i, m in enumerate(host):
        if not math.isfinite(float(m["loss"])):
            raise FloatingPointError(
                f"non-finite loss {float(m['loss'])} at training step {first_step + i + 1} "
                f"(epoch {epoch + 1}); stopping without saving this state"
            )
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


class _MetricsWriter:
    """Appends JSON lines to <phase_dir>/metrics.jsonl on process 0 only."""

    def __init__(self, phase_dir: str, *, resumed_epoch: int):
        """Drops records of epochs after `resumed_epoch` (and a torn last line): they were written
        by a run killed before its checkpoint of that epoch was complete, and are redone now."""
        self.path = os.path.join(phase_dir, "metrics.jsonl")
        if jax.process_index() == 0 and os.path.exists(self.path):
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict) and record.get("epoch", 0) <= resumed_epoch:
                        kept.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_phase(
    phase: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh,
    train_ds: Dataset,
    eval_ds: Dataset,
    info: Any,
    teacher_variables: Any = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Trains the teacher or the student, resuming from WORKDIR/<phase> if it holds a checkpoint.

    `teacher_variables` (student phase): the frozen teacher's {'params', 'batch_stats'}, replicated.
    `stop_after_steps` behaves like a SIGTERM arriving after that global step (for tests and
    time-limited jobs). Returns the meta of the final state (epoch, eval accuracy, best accuracy,
    ...). Raises Preempted after SIGTERM (state saved) and FloatingPointError on a non-finite loss
    (the last good checkpoint is left as it is).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    spiking = phase == "student"
    pcfg = config[phase]
    phase_dir = os.path.join(workdir, phase)
    batch = pcfg.batch_size
    steps_per_epoch = len(train_ds) // batch
    if steps_per_epoch < 1:
        raise ValueError(f"{phase}.batch_size {batch} exceeds the {len(train_ds)} training images")
    total_steps = pcfg.epochs * steps_per_epoch
    num_classes = info.num_classes
    image_shape = tuple(train_ds.images.shape[1:])

    program = _phase_program(
        phase,
        config.to_json(sort_keys=True),
        num_classes,
        steps_per_epoch,
        image_shape,
        _stats(info),
        mesh,
    )
    step_fn, eval_fn, schedule = program.step_fn, program.eval_fn, program.schedule
    extra_args: tuple[Any, ...] = (teacher_variables,) if spiking else ()
    meta_model = model_meta(config, num_classes=num_classes, spiking=spiking)

    rep = parallel.replicated(mesh)
    abstract = ckpt_lib.abstract_like(
        jax.eval_shape(program.init_fn, jax.random.key(config.seed)), rep
    )
    checkpoints = ckpt_lib.PhaseCheckpoints(
        phase_dir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    meta: dict[str, Any] = {"epoch": 0, "best_accuracy": -1.0, "eval_accuracy": None}
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore_latest(abstract)
        logging.info("%s: resumed from step %d (%s)", phase, int(state.step), phase_dir)
    else:
        state = program.init_fn(jax.random.key(config.seed))
    step = int(jax.device_get(state.step))
    writer = _MetricsWriter(phase_dir, resumed_epoch=int(meta.get("epoch", 0)))

    def save(epoch_done: int, eval_acc: float | None, *, finished: bool) -> None:
        improved = eval_acc is not None and eval_acc > meta["best_accuracy"]
        meta.update(
            epoch=epoch_done,
            eval_accuracy=eval_acc,
            best_accuracy=max(meta["best_accuracy"], -1.0 if eval_acc is None else eval_acc),
            finished=finished,
            model=meta_model,
            step=step,
        )
        checkpoints.save(state, dict(meta), best=improved)

    logging.info(
        "%s: %d epochs x %d steps, global batch %d on %d devices (%d processes)",
        phase,
        pcfg.epochs,
        steps_per_epoch,
        batch,
        mesh.size,
        jax.process_count(),
    )
    try:
        with sigterm_flag() as sigterm:

            def stop_requested(*, sync_point: bool) -> bool:
                local = sigterm() or (stop_after_steps is not None and step >= stop_after_steps)
                if jax.process_count() == 1:
                    return local
                # Processes receive SIGTERM at different moments; they must stop after the same
                # step or the next collective hangs. They agree at sync points only (one
                # host round trip each), which every process reaches at the same steps.
                return sync_point and _any_process(local)

            for epoch in range(step // steps_per_epoch, pcfg.epochs):
                t0 = time.perf_counter()
                order = data_lib.epoch_permutation(
                    config.seed + _PHASE_STREAM[phase], epoch, len(train_ds)
                )
                window: list[dict[str, jax.Array]] = []
                epoch_means: list[dict[str, float]] = []
                window_start, window_t0, first_in_epoch = step, time.perf_counter(), step
                for b in range(step % steps_per_epoch, steps_per_epoch):
                    rows = _process_part(np.asarray(order[b * batch : (b + 1) * batch]))
                    images, labels = parallel.global_batch(
                        (train_ds.images[rows], train_ds.labels[rows]), mesh
                    )
                    state, metrics = step_fn(state, *extra_args, images, labels)
                    step += 1
                    window.append(metrics)
                    last_of_epoch = b == steps_per_epoch - 1
                    at_log = step % config.log_every_steps == 0 or last_of_epoch
                    stop = stop_requested(sync_point=at_log)
                    if at_log or stop:
                        summary = _summarise(window, window_start, epoch)
                        epoch_means.append(summary | {"n": len(window)})
                        dt = time.perf_counter() - window_t0
                        logging.info(
                            "%s epoch %d step %d/%d: loss %.4f acc %.4f, %.2f steps/s, ETA %s",
                            phase,
                            epoch + 1,
                            step,
                            total_steps,
                            summary["loss"],
                            summary["accuracy"],
                            len(window) / dt,
                            _fmt_eta((total_steps - step) * dt / len(window)),
                        )
                        window, window_start, window_t0 = [], step, time.perf_counter()
                    if stop and not last_of_epoch:
                        save(epoch, None, finished=False)
                        checkpoints.wait()
                        raise Preempted(f"{phase}: stopped at step {step}; checkpoint saved")

                epoch_time = time.perf_counter() - t0
                done = epoch + 1
                last = done == pcfg.epochs
                eval_acc = None
                if done % config.eval.every_epochs == 0 or last:
                    eval_acc = evaluate(
                        eval_fn,
                        state.variables,
                        eval_ds,
                        mesh=mesh,
                        batch_size=config.eval.batch_size,
                    )
                if done % config.checkpoint.every_epochs == 0 or last or eval_acc is not None:
                    # Always save alongside an eval, so that best/ can hold it if it improved.
                    save(done, eval_acc, finished=last)
                n_steps = step - first_in_epoch
                record = {
                    "epoch": done,
                    "step": step,
                    "lr": float(schedule(step - 1)),
                    "eval_accuracy": eval_acc,
                    "best_accuracy": meta["best_accuracy"],
                    "epoch_time_s": epoch_time,
                    "steps_per_s": n_steps / epoch_time,
                    "images_per_s": n_steps * batch / epoch_time,
                    "eta_s": (pcfg.epochs - done) * epoch_time,
                }
                weights = np.array([m["n"] for m in epoch_means], float)
                for k in epoch_means[0]:
                    if k != "n":
                        record["train_" + k] = float(
                            np.average([m[k] for m in epoch_means], weights=weights)
                        )
                writer.write(record)
                logging.info(
                    "%s epoch %d/%d: train loss %.4f acc %.4f, eval acc %s, %.1f images/s",
                    phase,
                    done,
                    pcfg.epochs,
                    record["train_loss"],
                    record["train_accuracy"],
                    "-" if eval_acc is None else f"{eval_acc:.4f}",
                    record["images_per_s"],
                )
                if stop_requested(sync_point=True) and not last:
                    save(done, eval_acc, finished=False)  # no-op if saved at this step above
                    checkpoints.wait()
                    raise Preempted(f"{phase}: stopped at step {step}; checkpoint saved")
    finally:
        checkpoints.wait()
        checkpoints.close()
    if not meta.get("finished"):
        # Resumed a checkpoint saved after the last epoch but before it was marked finished.
        meta["finished"] = step >= total_steps
    return meta


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- experiment


def load_data(config: ml_collections.ConfigDict) -> tuple[Dataset, Dataset, Any]:
    """(train, eval, DatasetInfo of the train split) from config.data.

    mean/std come from the whole train split. data.train_examples > 0 trains on a class-balanced
    subset; data.validation_examples > 0 holds that many train examples out of training, and
    data.eval_on_validation evaluates on them instead of data.eval_split (for tuning). Both
    subsets are drawn with data.subset_seed (see htakl_jax.data.subsets).
    """
    d = config.data
    kwargs = dict(data_dir=d.data_dir or None, cache_dir=d.cache_dir or None)
    tr_images, tr_labels, info = data_lib.load_split(d.name, d.train_split, **kwargs)
    try:
        train_idx, val_idx = data_lib.balanced_split(
            tr_labels,
            info.num_classes,
            train_examples=d.train_examples,
            validation_examples=d.validation_examples,
            seed=d.subset_seed,
        )
    except ValueError as e:
        raise ValueError(f"config.data.train_examples / validation_examples: {e}") from e
    if d.eval_on_validation:
        eval_ds = Dataset(tr_images[val_idx], tr_labels[val_idx])
    else:
        ev_images, ev_labels, ev_info = data_lib.load_split(d.name, d.eval_split, **kwargs)
        if ev_info.num_classes != info.num_classes:
            raise ValueError(
                f"data: split {d.eval_split!r} has {ev_info.num_classes} classes but "
                f"{d.train_split!r} has {info.num_classes}"
            )
        eval_ds = Dataset(ev_images, ev_labels)
    if d.train_examples or d.validation_examples:
        train_ds = Dataset(tr_images[train_idx], tr_labels[train_idx])
    else:
        train_ds = Dataset(tr_images, tr_labels)
    return train_ds, eval_ds, info


def load_eval_data(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray, Any]:
    """The eval set of :func:`load_data` as (images, labels, DatasetInfo of the train split)."""
    _, eval_ds, info = load_data(config)
    return eval_ds.images, eval_ds.labels, info


def teacher_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The teacher phase directory: student.teacher_checkpoint, or WORKDIR/teacher."""
    return config.student.teacher_checkpoint or os.path.join(workdir, "teacher")


def teacher_finished(path: str) -> bool:
    """Whether `path` holds a teacher checkpoint marked finished (all epochs done)."""
    if not ckpt_lib.has_checkpoint(path):
        return False
    return bool(ckpt_lib.read_meta(path, prefer_best=False)[1].get("finished"))


def restore_for_eval(
    phase_dir: str, model: nn.Module, config, info, mesh, *, spiking: bool
) -> tuple[Any, dict, str]:
    """Best-checkpoint variables of a phase, placed replicated on `mesh`; also (meta, path)."""
    shape = (1, *info.image_size, 3)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False)
    )
    abstract = ckpt_lib.abstract_like(abstract, parallel.replicated(mesh))
    expected = model_meta(config, num_classes=info.num_classes, spiking=spiking)
    return ckpt_lib.restore_variables_from(phase_dir, abstract, expected_model=expected)


def evaluate_experiment(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    mesh: jax.sharding.Mesh,
    eval_ds: Dataset,
    info: Any,
) -> dict[str, Any]:
    """Teacher accuracy and student accuracy at each config.eval.timesteps (best checkpoints)."""
    teacher = build_model(config, num_classes=info.num_classes, spiking=False)
    student = build_model(config, num_classes=info.num_classes, spiking=True)
    t_vars, _, t_path = restore_for_eval(
        teacher_dir(config, workdir), teacher, config, info, mesh, spiking=False
    )
    s_vars, s_meta, s_path = restore_for_eval(
        os.path.join(workdir, "student"), student, config, info, mesh, spiking=True
    )
    bs = config.eval.batch_size
    key = (config.to_json(sort_keys=True), info.num_classes)
    t_fn = _eval_program(*key, False, None, _stats(info), mesh)
    teacher_acc = evaluate(t_fn, t_vars, eval_ds, mesh=mesh, batch_size=bs)
    student_acc = {}
    for t in config.eval.timesteps:
        fn = _eval_program(*key, True, int(t), _stats(info), mesh)
        student_acc[str(int(t))] = evaluate(fn, s_vars, eval_ds, mesh=mesh, batch_size=bs)
        logging.info("student accuracy at T=%d: %.4f", t, student_acc[str(int(t))])
    logging.info("teacher accuracy: %.4f", teacher_acc)
    return {
        "dataset": config.data.name,
        "model": config.model.name,
        "method": config.student.method,
        "num_eval_examples": len(eval_ds),
        "teacher_accuracy": teacher_acc,
        "student_timesteps": int(config.student.timesteps),
        "student_accuracy": student_acc,
        "student_epoch": s_meta.get("epoch"),
        "checkpoints": {"teacher": t_path, "student": s_path},
        "config": json.loads(config.to_json()),
    }


def run(config: ml_collections.ConfigDict, workdir: str, *, mode: str = "all") -> dict | None:
    """Runs `mode` (all | teacher | distill | eval) of the experiment in `workdir`.

    Data are loaded (and checked) before anything is written. 'all' = teacher (skipped if a
    finished teacher checkpoint exists, or if student.teacher_checkpoint points elsewhere), then
    student, then eval. Returns the results dict for modes that evaluate.
    """
    mesh = parallel.make_mesh()
    train_ds, eval_ds, info = load_data(config)
    t_dir = teacher_dir(config, workdir)
    config_validation.check_existing_checkpoints(
        config, info.num_classes, mode=mode, workdir=workdir
    )

    train_teacher = mode == "teacher" or (
        mode == "all" and not config.student.teacher_checkpoint and not teacher_finished(t_dir)
    )

    def restore_teacher() -> Any:
        if mode not in ("all", "distill") or config.student.method == "ce":
            return None
        teacher = build_model(config, num_classes=info.num_classes, spiking=False)
        variables, _, path = restore_for_eval(t_dir, teacher, config, info, mesh, spiking=False)
        logging.info("distilling from teacher %s", path)
        return variables

    # An existing teacher is restored before anything is written, so that a damaged or
    # mismatched one fails without touching the workdir.
    teacher_vars = None if train_teacher else restore_teacher()
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))

    if train_teacher:
        train_phase(
            "teacher", config, workdir, mesh=mesh, train_ds=train_ds, eval_ds=eval_ds, info=info
        )
        teacher_vars = restore_teacher()
    elif mode == "all":
        logging.info("reusing the finished teacher in %s", t_dir)

    if mode in ("all", "distill"):
        train_phase(
            "student",
            config,
            workdir,
            mesh=mesh,
            train_ds=train_ds,
            eval_ds=eval_ds,
            info=info,
            teacher_variables=teacher_vars,
        )

    if mode in ("all", "eval"):
        results = evaluate_experiment(config, workdir, mesh=mesh, eval_ds=eval_ds, info=info)
        if jax.process_index() == 0:
            tmp = os.path.join(workdir, "results.json.tmp")
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            os.replace(tmp, os.path.join(workdir, "results.json"))
        return results
    return None
