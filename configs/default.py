"""Default configuration: every key the training system reads, with its meaning and unit.

Experiment configs (`configs/cifar.py`, `configs/quickstart.py`, ...) start from `get_config()` here
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

    c.data = ml_collections.ConfigDict()
    # Registry name in htakl_jax.data: cifar10, cifar100 (tfds), cifar10_pickle, cifar100_pickle,
    # image_folder, tiny_imagenet, digits.
    c.data.name = "cifar10"
    # Root of the source ('' = the source's default, e.g. ~/tensorflow_datasets for tfds).
    c.data.data_dir = ""
    # Where decoded arrays are cached ('' = ~/.cache/htakl_jax).
    c.data.cache_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "test"
    # Train on a class-balanced subset of this many train examples (0 = the whole split).
    c.data.train_examples = 0
    # The teacher's training subset size instead of train_examples (None = the same subset; 0 =
    # every example not held out): a teacher on all the data beside a student on a subset.
    c.data.teacher_train_examples = config_dict.placeholder(int)
    # Hold this many class-balanced train examples out of training (0 = none) ...
    c.data.validation_examples = 0
    # ... and evaluate on them instead of eval_split: tune hyperparameters without the test set.
    c.data.eval_on_validation = False
    # Seed of both subsets (independent of `seed`, so every run of a grid sees the same images).
    c.data.subset_seed = 0
    # Random crop: zero padding in pixels on each side (0 disables the crop).
    c.data.pad = 4
    # Random horizontal flip.
    c.data.flip = True

    c.model = ml_collections.ConfigDict()
    # resnet19, resnet20, vgg16, sew_resnet18, sew_resnet34 (same topology for teacher and student).
    c.model.name = "resnet20"
    # Scales every channel width (1.0 = the paper's models).
    c.model.width_mult = 1.0
    # Compute dtype of the models: float32 or bfloat16 (parameters stay float32).
    c.model.dtype = "float32"
    # What the backward recomputes instead of storing (peak memory for step time; results are
    # unchanged): 'none'; 'neuron', each LIF its membrane; 'block', each residual block /
    # conv-BN-LIF unit all but its conv outputs (ResNet-20 at T=6: -62% peak memory at 1.17x step
    # time, see benchmarks/memory.py). Teacher and student. With remat on, CPU steps compile
    # with XLA's memory-optimised schedule (steps.step_compiler_options).
    c.model.remat = "none"
    c.model.neuron = ml_collections.ConfigDict()
    # LIF membrane time constant (dimensionless, in timesteps; >= 1, see neurons.neuron_config).
    c.model.neuron.tau = 2.0
    c.model.neuron.v_threshold = 1.0
    # Hard-reset potential; None = soft reset (subtract the threshold).
    c.model.neuron.v_reset = config_dict.placeholder(float)
    c.model.neuron.v_reset = 0.0
    c.model.neuron.decay_input = True
    c.model.neuron.detach_reset = False
    # Surrogate gradient: sigmoid, atan, rectangle, triangle, superspike; and its alpha.
    c.model.neuron.surrogate = "sigmoid"
    c.model.neuron.surrogate_alpha = 4.0

    c.teacher = ml_collections.ConfigDict()
    c.teacher.epochs = 300
    # Global batch size (over all devices and hosts); must be divisible by the device count.
    c.teacher.batch_size = 128
    # Peak learning rate; cosine decay to 0 over all steps after a linear warmup.
    c.teacher.lr = 0.1
    c.teacher.warmup_epochs = 0
    c.teacher.momentum = 0.9
    c.teacher.nesterov = False
    # L2 weight decay on conv/dense kernels, added to the gradient before momentum.
    c.teacher.weight_decay = 5e-4

    c.student = ml_collections.ConfigDict()
    # Training timesteps T of the spiking student.
    c.student.timesteps = 4
    # ce, fkl, rkl, symmetric, fixed_ratio, hta_kl (see htakl_jax.losses), or the comparison
    # methods kdsnn, lasnn, bkdsnn (see htakl_jax.methods; their settings in the blocks below).
    c.student.method = "hta_kl"
    # Loss = (1 - alpha) * CE + alpha * KD.
    c.student.alpha = 0.9
    # KD temperature tau_kd (> 0).
    c.student.temperature = 4.0
    # HTA-KL head threshold: cumulative teacher mass of the head, in (0, 1].
    c.student.mu = 0.5
    # hta_kl only: temperature of the distributions its head/tail weights come from; None = the
    # KD temperature (one softened pair for loss and weights, the literal reading of the paper).
    # 1.0 = the unsoftened distributions (AKL's LLM reference; the common CIFAR port).
    c.student.weight_temperature = config_dict.placeholder(float)
    # fixed_ratio only: weight r of FKL (1 - r for RKL), in [0, 1]; None elsewhere.
    c.student.head_ratio = config_dict.placeholder(float)
    # Teacher checkpoint directory ('' = WORKDIR/teacher); its best-accuracy checkpoint is used.
    c.student.teacher_checkpoint = ""
    c.student.epochs = 300
    c.student.batch_size = 128
    c.student.lr = 0.01
    c.student.warmup_epochs = 0
    c.student.momentum = 0.9
    c.student.nesterov = False
    c.student.weight_decay = 5e-4

    # The comparison methods (BASELINES.md; htakl_jax.methods). "features": what the student's
    # stage taps record: the time mean of the block output spikes ("rate"), of the input current
    # of the block's last LIF ("preact") or of its charged membrane ("membrane"). Feature methods
    # need model.remat 'none' or 'neuron'. alpha and temperature of their FKL term: student.*.
    c.kdsnn = ml_collections.ConfigDict()
    # Weight of the feature MSE (sum / B) on the pooled last-stage features (BKDSNN's CIFAR value).
    c.kdsnn.beta = 2e-3
    # "always": a Dense + BN adapter on the student feature; "if_needed": none (equal widths).
    c.kdsnn.adapter = "always"
    # Match the un-pooled last maps through a 1x1 conv + BN adapter instead.
    c.kdsnn.spatial = False
    c.kdsnn.features = "rate"
    c.lasnn = ml_collections.ConfigDict()
    # "attention": attention transfer on every stage; "mse": BKDSNN's re-implementation (sum / B).
    c.lasnn.distance = "attention"
    # Weight of the summed stage terms; None = 1000 (attention) or 2e-3 (mse).
    c.lasnn.beta = config_dict.placeholder(float)
    # "joint": every stage from the start (as BKDSNN ran it); "progressive": stage l from epoch
    # l * warmup_epochs / stages (a guess at the paper's layer-wise paradigm).
    c.lasnn.schedule = "joint"
    c.lasnn.warmup_epochs = 30
    c.lasnn.features = "rate"
    c.bkdsnn = ml_collections.ConfigDict()
    # Weight alpha_b of sum / B (G(F_s * M) - F_t)^2 on the last stage (the authors' CIFAR value).
    c.bkdsnn.alpha = 2e-3
    # Fraction lambda of student channels blurred (masked) per example and step.
    c.bkdsnn.mask_ratio = 0.15
    # Logit term: "wsld" (CE + wsld_weight * WSLD at `temperature`, the authors') or "fkl"
    # ((1 - alpha) CE + alpha FKL with student.alpha / student.temperature, as HTA-KL's).
    c.bkdsnn.logit = "wsld"
    c.bkdsnn.temperature = 2.0
    c.bkdsnn.wsld_weight = 1.0
    # Rescale the teacher map to the student's maximum (off in the authors' configs).
    c.bkdsnn.use_clip = False
    c.bkdsnn.features = "rate"

    c.eval = ml_collections.ConfigDict()
    # Student accuracy is reported at each of these T (same parameters, T overridden at apply).
    c.eval.timesteps = (1, 2, 4, 6)
    # Global eval batch size; the last partial batch is padded and masked.
    c.eval.batch_size = 256
    # Evaluate (and maybe save the best checkpoint) every this many epochs (and after the last).
    c.eval.every_epochs = 1

    c.checkpoint = ml_collections.ConfigDict()
    # The checkpoint a phase hands on (teacher to distillation, results.json): "final" (after the
    # last epoch) or "best" (highest eval accuracy; only with data.eval_on_validation, so that
    # the test split never selects a checkpoint).
    c.checkpoint.select = "final"
    # Save the latest state every this many epochs (and always after the last epoch / on SIGTERM).
    c.checkpoint.every_epochs = 1
    # Number of latest checkpoints kept (the best-accuracy one is kept separately, in best/).
    c.checkpoint.keep = 2
    # Write checkpoints in a background thread (waited for before exit).
    c.checkpoint.async_save = True

    # Console progress every this many steps (loss is also checked for NaN/Inf at that point).
    c.log_every_steps = 50

    c.distributed = ml_collections.ConfigDict()
    # Call jax.distributed.initialize(): 'auto' = when JAX_COORDINATOR_ADDRESS (or a cluster
    # environment JAX auto-detects, e.g. SLURM/TPU with several processes) is present; 'yes'; 'no'.
    c.distributed.initialize = "auto"
    # Explicit coordinator 'host:port', process count and id ('' / -1 = from env / auto-detect).
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    return c
