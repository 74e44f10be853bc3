"""Knowledge-distillation losses: forward/reverse KL, HTA-KL and the ablations (docs/method.md §4).

Standalone: this package imports only jax and numpy, so other JAX projects can use it without
Flax, optax or TensorFlow (`from htakl_jax.losses import hta_kl`). The loss family lives in
:mod:`.kd`, the head set and the HTA-KL weights (with the sort-free search for large
vocabularies) in :mod:`.head_set`, and the fused linear + KD loss (`fused_linear_kd`: the loss
from hidden states and the output projection, never materialising [tokens, vocab] logits) in
:mod:`.fused`. `row_statistics` and `student_logit_grad` split any KD loss into a forward over
whole rows and an elementwise gradient over any block of classes (what `fused` is built from).

Conventions shared by every loss:
- `student_logits` and `teacher_logits` are shaped [..., C]; the result is per example, shaped
  [...] (no reduction, like optax), with the temperature factor tau^2 already included.
- Computation is in float32 at least (bf16/fp16 logits are upcast; float64 stays float64).
- `-inf` logits mark classes with probability 0 (masked vocabulary). They contribute 0 to every
  sum (0 log 0 = 0) and give finite values and gradients as long as teacher and student mask the
  same classes. A class that only one side masks makes that KL +inf, which is its true value.
- `where` (bool, shaped [...]) marks valid positions, e.g. the padding mask of [batch, length,
  vocab] sequence logits. Invalid positions return 0 and receive zero gradient; their logits may
  hold anything, NaN included.
- Shapes are checked at trace time; mismatches raise ValueError naming both shapes.
- Reverse-mode gradients (jax.grad, jax.vjp) flow to both logits and the temperature through a
  hand-written VJP (in :mod:`.kd`); forward-mode (jax.jvp, jax.jacfwd) is not supported.

HTA-KL (head-tail-aware KL): teacher classes sorted by probability form a "head" (the prefix whose
cumulative teacher mass stays <= mu, and always the top-1 class) and a "tail" (the rest). The summed
|p - q| gaps on each side set the weights of forward KL (head-seeking) and reverse KL
(tail-covering): HTA-KL = w_head * FKL + w_tail * RKL. By default the weights come from the same
temperature-softened p and q as the KL terms; `weight_temperature` takes them at another
temperature (1.0: the unsoftened distributions; see `hta_kl`). Ties in teacher probability are
broken by class index (the lower index ranks first), so the head set is deterministic. Up to
`head_set.sort_max_classes()` classes (16 on the CPU backend, 1,024 elsewhere) the head comes from
a sort; above, from a sort-free threshold search with the same result.
"""

from htakl_jax.losses.fused import FUSED_METHODS, fused_linear_kd, fused_linear_kd_with_weight
from htakl_jax.losses.head_set import PATHS as HEAD_SET_PATHS
from htakl_jax.losses.kd import (
    BLOCK_ELEMENTS,
    HEAD_SET_BLOCK_ELEMENTS,
    HEAD_SET_BLOCK_ROWS,
    KD_METHODS,
    METHODS,
    RowStats,
    cross_entropy,
    distillation_loss,
    fixed_ratio_kl,
    forward_kl,
    head_tail_weights,
    hta_kl,
    hta_kl_with_weight,
    reverse_kl,
    row_block_size,
    row_statistics,
    student_logit_grad,
    symmetric_kl,
    wsld,
)

__all__ = [
    "BLOCK_ELEMENTS",
    "FUSED_METHODS",
    "HEAD_SET_BLOCK_ELEMENTS",
    "HEAD_SET_BLOCK_ROWS",
    "HEAD_SET_PATHS",
    "KD_METHODS",
    "METHODS",
    "RowStats",
    "cross_entropy",
    "distillation_loss",
    "fixed_ratio_kl",
    "forward_kl",
    "fused_linear_kd",
    "fused_linear_kd_with_weight",
    "head_tail_weights",
    "hta_kl",
    "hta_kl_with_weight",
    "reverse_kl",
    "row_block_size",
    "row_statistics",
    "student_logit_grad",
    "symmetric_kl",
    "wsld",
]
