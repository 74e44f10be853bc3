"""Default configuration: every key the training system reads, with its meaning and unit.

Experiment configs (`configs/cifar.py`, `configs/quickstart.py`, ...) start from `get_config()` here
(`from htakl_jax import defaults`; in the package so that an installed copy has it)
and override values; they never add keys, so `htakl_jax.config_validation` can reject unknown keys.
Command-line overrides work on any key, e.g. `--config.teacher.epochs=3`.

Hyperparameters follow the paper where it states them (SGD momentum 0.9, student LR 0.01 with cosine
decay, batch 128, 300 epochs, random crop + horizontal flip). Where the paper is silent we chose:
- KD temperature 4.0 and alpha 0.9 (the usual CIFAR KD setting, e.g. Hinton-style KD baselines);
- weight decay 5e-4 on conv/dense kernels only (not on BN scales/biases) for teacher and student;
- teacher: SGD LR 0.1 with cosine decay, 300 epochs, batch 128 (standard CIFAR ANN recipe);
- no warmup (warmup_epochs = 0), no Nesterov.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Returns the default (CIFAR-10, ResNet-20, T=4, HTA-KL) configuration, unlocked."""
    c = ml_collections.ConfigDict()

    # Root seed: parameter init, data order (per epoch) and augmentation (per step) derive from it.
    c.seed = 0

    c.data = _data()
    c.model = _model()
    c.teacher = _teacher()
    c.student = _student()
    # The comparison methods (docs/method.md §7; htakl_jax.methods). "features": what the student's
    # stage taps record: the time mean of the block output spikes ("rate"), of the input current
    # of the block's last LIF ("preact") or of its charged membrane ("membrane"). Feature methods
    # need model.remat 'none' or 'neuron'. alpha and temperature of their FKL term: student.*.
    c.kdsnn = _kdsnn()
    c.lasnn = _lasnn()
    c.bkdsnn = _bkdsnn()

    c.eval = _eval()
    c.checkpoint = _checkpoint()
    # Console progress every this many steps (loss is also checked for NaN/Inf at that point).
    c.log_every_steps = 50
    # JAX's persistent compilation cache: '' = $HTAKL_JAX_COMPILATION_CACHE, else
    # $JAX_COMPILATION_CACHE_DIR, else ~/.cache/htakl_jax/jax; a folder; or 'off'
    # (htakl_jax.compilation).
    c.compilation_cache = ""

    c.distributed = _distributed()

    return c


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Registry name in htakl_jax.data: cifar10, cifar100 (tfds), cifar10_pickle, cifar100_pickle,
    # image_folder, tiny_imagenet, digits.
    d.name = "cifar10"
    # Root of the source ('' = the source's default, e.g. ~/tensorflow_datasets for tfds).
    d.data_dir = ""
    # tfds sources only: prepare missing data with tfds (needs TensorFlow and a network).
    d.download = False
    # Where decoded arrays are cached ('' = ~/.cache/htakl_jax).
    d.cache_dir = ""
    d.train_split = "train"
    d.eval_split = "test"
    # Train on a class-balanced subset of this many train examples (0 = the whole split).
    d.train_examples = 0
    # The teacher's training subset size instead of train_examples (None = the same subset; 0 =
    # every example not held out): a teacher on all the data beside a student on a subset.
    d.teacher_train_examples = config_dict.placeholder(int)
    # Hold this many class-balanced train examples out of training (0 = none) ...
    d.validation_examples = 0
    # ... and evaluate on them instead of eval_split: tune hyperparameters without the test set.
    d.eval_on_validation = False
    # Seed of both subsets (independent of `seed`, so every run of a grid sees the same images).
    d.subset_seed = 0
    # Random crop: zero padding in pixels on each side (0 disables the crop).
    d.pad = 4
    # Random horizontal flip.
    d.flip = True
    return d


def _model() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # resnet19, resnet20, vgg16, sew_resnet18, sew_resnet34 (same topology for teacher and student).
    d.name = "resnet20"
    # Scales every channel width (1.0 = the paper's models).
    d.width_mult = 1.0
    # Compute dtype of the models: float32 or bfloat16 (parameters stay float32).
    d.dtype = "float32"
    # What the backward recomputes instead of storing (peak memory for step time; results are
    # unchanged): 'none'; 'neuron', each LIF its membrane; 'block', each residual block /
    # conv-BN-LIF unit all but its conv outputs (ResNet-20 at T=6: -62% peak memory at 1.17x step
    # time, see benchmarks/memory.py). Teacher and student. With remat on, CPU steps compile
    # with XLA's memory-optimised schedule (steps.step_compiler_options).
    d.remat = "none"
    d.neuron = ml_collections.ConfigDict()
    # LIF membrane time constant (dimensionless, in timesteps; >= 1, see neurons.neuron_config).
    d.neuron.tau = 2.0
    d.neuron.v_threshold = 1.0
    # Hard-reset potential; None = soft reset (subtract the threshold).
    d.neuron.v_reset = config_dict.placeholder(float)
    d.neuron.v_reset = 0.0
    d.neuron.decay_input = True
    d.neuron.detach_reset = False
    # Surrogate gradient: sigmoid, atan, rectangle, triangle, superspike; and its alpha.
    d.neuron.surrogate = "sigmoid"
    d.neuron.surrogate_alpha = 4.0
    return d


def _teacher() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.epochs = 300
    # Global batch size (over all devices and hosts); must be divisible by the device count.
    d.batch_size = 128
    # Peak learning rate; cosine decay to 0 over all steps after a linear warmup.
    d.lr = 0.1
    d.warmup_epochs = 0
    d.momentum = 0.9
    d.nesterov = False
    # L2 weight decay on conv/dense kernels, added to the gradient before momentum.
    d.weight_decay = 5e-4
    # Clip the loss gradient to this global L2 norm before the step; None = no clipping.
    d.grad_clip_norm = config_dict.placeholder(float)
    return d


def _student() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Training timesteps T of the spiking student.
    d.timesteps = 4
    # ce, fkl, rkl, symmetric, fixed_ratio, hta_kl (see htakl_jax.losses), or the comparison
    # methods kdsnn, lasnn, bkdsnn (see htakl_jax.methods; their settings in the blocks below).
    d.method = "hta_kl"
    # Loss = (1 - alpha) * CE + alpha * KD.
    d.alpha = 0.9
    # KD temperature tau_kd (> 0).
    d.temperature = 4.0
    # HTA-KL head threshold: cumulative teacher mass of the head, in (0, 1].
    d.mu = 0.5
    # hta_kl only: temperature of the distributions its head/tail weights come from; None = the
    # KD temperature (one softened pair for loss and weights, the literal reading of the paper).
    # 1.0 = the unsoftened distributions (AKL's LLM reference; the common CIFAR port).
    d.weight_temperature = config_dict.placeholder(float)
    # fixed_ratio only: weight r of FKL (1 - r for RKL), in [0, 1]; None elsewhere.
    d.head_ratio = config_dict.placeholder(float)
    # Teacher checkpoint directory ('' = WORKDIR/teacher); its best-accuracy checkpoint is used.
    d.teacher_checkpoint = ""
    d.epochs = 300
    d.batch_size = 128
    d.lr = 0.01
    d.warmup_epochs = 0
    d.momentum = 0.9
    d.nesterov = False
    d.weight_decay = 5e-4
    d.grad_clip_norm = config_dict.placeholder(float)  # as the teacher's
    return d


def _kdsnn() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Weight of the feature MSE (sum / B) on the pooled last-stage features (BKDSNN's CIFAR value).
    d.beta = 2e-3
    # "always": a Dense + BN adapter on the student feature; "if_needed": none (equal widths).
    d.adapter = "always"
    # Match the un-pooled last maps through a 1x1 conv + BN adapter instead.
    d.spatial = False
    d.features = "rate"
    return d


def _lasnn() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # "attention": attention transfer on every stage; "mse": BKDSNN's re-implementation (sum / B).
    d.distance = "attention"
    # Weight of the summed stage terms; None = 1000 (attention) or 2e-3 (mse).
    d.beta = config_dict.placeholder(float)
    # "joint": every stage from the start (as BKDSNN ran it); "progressive": stage l from epoch
    # l * warmup_epochs / stages (a guess at the paper's layer-wise paradigm).
    d.schedule = "joint"
    d.warmup_epochs = 30
    d.features = "rate"
    return d


def _bkdsnn() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Weight alpha_b of sum / B (G(F_s * M) - F_t)^2 on the last stage (the authors' CIFAR value).
    d.alpha = 2e-3
    # Fraction lambda of student channels blurred (masked) per example and step.
    d.mask_ratio = 0.15
    # Logit term: "wsld" (CE + wsld_weight * WSLD at `temperature`, the authors') or "fkl"
    # ((1 - alpha) CE + alpha FKL with student.alpha / student.temperature, as HTA-KL's).
    d.logit = "wsld"
    d.temperature = 2.0
    d.wsld_weight = 1.0
    # Rescale the teacher map to the student's maximum (off in the authors' configs).
    d.use_clip = False
    d.features = "rate"
    return d


def _eval() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Student accuracy is reported at each of these T (same parameters, T overridden at apply).
    d.timesteps = (1, 2, 4, 6)
    # Global eval batch size; the last partial batch is padded and masked.
    d.batch_size = 256
    # Evaluate (and maybe save the best checkpoint) every this many epochs (and after the last).
    d.every_epochs = 1
    return d


def _checkpoint() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # The checkpoint a phase hands on (teacher to distillation, results.json): "final" (after the
    # last epoch) or "best" (highest eval accuracy; only with data.eval_on_validation, so that
    # the test split never selects a checkpoint).
    d.select = "final"
    # Save the latest state every this many epochs (and always after the last epoch / on SIGTERM).
    d.every_epochs = 1
    # Number of latest checkpoints kept (the best-accuracy one is kept separately, in best/).
    d.keep = 2
    # Write checkpoints in a background thread (waited for before exit).
    d.async_save = True
    return d


def _distributed() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Call jax.distributed.initialize(): 'auto' = when JAX_COORDINATOR_ADDRESS (or a cluster
    # environment JAX auto-detects, e.g. SLURM/TPU with several processes) is present; 'yes'; 'no'.
    d.initialize = "auto"
    # Explicit coordinator 'host:port', process count and id ('' / -1 = from env / auto-detect).
    d.coordinator_address = ""
    d.num_processes = -1
    d.process_id = -1
    return d
