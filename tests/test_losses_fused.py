"""The fused linear + KD loss (htakl_jax.losses.fused) against the loss on materialised logits.

Every check compares `fused_linear_kd(hidden, weight, teacher, ...)` with the unfused function on
`hidden @ weight + bias`: values, and gradients with respect to hidden, weight and bias for a
summed loss and for a random per-row cotangent (jax.vjp), to float32 rounding. Sizes are tiny,
with row counts that chunks do not divide; HTA-KL is also checked against the float64 references
of tests/test_losses.py and its sort path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htakl_jax import losses
from htakl_jax.losses import fused
from tests.test_losses import ref_fkl, ref_rkl, ref_weights_exact

TAU = 2.0
N, H, V, H_T = 37, 16, 50, 12
CHUNK = 8
CHUNK_COLS = 16  # 50 = 3 x 16 + 2: the last vocabulary block overlaps the one before
RTOL = 2e-5

# name: (fused_linear_kd keyword arguments, the materialised loss on logits)
CASES = {
    "fkl": ({"method": "fkl"}, functools.partial(losses.forward_kl, temperature=TAU)),
    "rkl": ({"method": "rkl"}, functools.partial(losses.reverse_kl, temperature=TAU)),
    "symmetric": ({"method": "symmetric"}, functools.partial(losses.symmetric_kl, temperature=TAU)),
    "fixed_ratio": (
        {"method": "fixed_ratio", "head_ratio": 0.3},
        functools.partial(losses.fixed_ratio_kl, head_ratio=0.3, temperature=TAU),
    ),
    "hta_kl": (
        {"method": "hta_kl", "mu": 0.5},
        functools.partial(losses.hta_kl, temperature=TAU, mu=0.5),
    ),
    "hta_kl_weight_temperature": (
        {"method": "hta_kl", "mu": 0.5, "weight_temperature": 1.0},
        functools.partial(losses.hta_kl, temperature=TAU, mu=0.5, weight_temperature=1.0),
    ),
    # the sort-free threshold search in the chunks against the sort on the materialised logits
    "hta_kl_threshold_vs_sort": (
        {"method": "hta_kl", "mu": 0.3, "path": "threshold"},
        functools.partial(losses.hta_kl, temperature=TAU, mu=0.3, path="sort"),
    ),
}


def make_problem(lead=(N,), seed=0, dtype=np.float32) -> dict:
    """Student hidden/weight/bias, teacher logits and teacher (hidden, weight, bias); logits of
    spread ~3 on both sides, the teacher near the student (a distillation in progress)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape), dtype)

    student = {
        "hidden": normal(*lead, H),
        "weight": normal(H, V, scale=3 * H**-0.5),
        "bias": normal(V, scale=0.5),
    }
    t_linear = (normal(*lead, H_T), normal(H_T, V, scale=3 * H_T**-0.5), normal(V, scale=0.5))
    logits = student["hidden"] @ student["weight"] + student["bias"]
    t_logits = logits + normal(*lead, V, scale=1.5)
    return {**student, "t_logits": t_logits, "t_linear": t_linear}


def teacher_logits(problem: dict, form: str) -> jax.Array:
    if form == "logits":
        return problem["t_logits"]
    t_hidden, t_weight, t_bias = problem["t_linear"]
    return t_hidden @ t_weight + t_bias


def assert_close(actual, expected, rtol=RTOL, err_msg=""):
    """Equal up to float32 rounding: relative to each entry and to the array's scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def _fused_fn(kwargs, teacher, **extra):
    def fn(hidden, weight, bias):
        return fused.fused_linear_kd(
            hidden,
            weight,
            teacher,
            bias=bias,
            temperature=TAU,
            chunk_rows=CHUNK,
            chunk_cols=CHUNK_COLS,
            **kwargs,
            **extra,
        )

    return fn


def _unfused_fn(loss, t_logits, where=None):
    def fn(hidden, weight, bias):
        logits = hidden @ weight + bias
        return loss(logits, t_logits) if where is None else loss(logits, t_logits, where=where)

    return fn


# ----------------------------------------------------------------------------------------------
# values and gradients, every method, both teacher forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_form", ("logits", "linear"))
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_match_materialised_logits(case, teacher_form):
    kwargs, loss = CASES[case]
    p = make_problem()
    teacher = p["t_logits"] if teacher_form == "logits" else p["t_linear"]
    ours = _fused_fn(kwargs, teacher)
    ref = _unfused_fn(loss, teacher_logits(p, teacher_form))
    args = (p["hidden"], p["weight"], p["bias"])
    value, vjp_ours = jax.vjp(ours, *args)
    value_ref, vjp_ref = jax.vjp(ref, *args)
    assert value.shape == (N,) and value.dtype == jnp.float32
    assert_close(value, value_ref, err_msg="values")
    assert np.all(np.asarray(value_ref) > 0)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(N), jnp.float32)
    for label, cotangent in (("sum", jnp.ones(N, jnp.float32)), ("random rows", ct)):
        for name, g, g_ref in zip(
            ("hidden", "weight", "bias"), vjp_ours(cotangent), vjp_ref(cotangent), strict=True
        ):
            assert g.dtype == jnp.float32
            assert_close(g, g_ref, err_msg=f"{label}: d/d{name}")


@pytest.mark.parametrize(
    "chunk_rows, chunk_cols", ((1, 1), (5, 7), (37, 50), (64, 128), ("auto", "auto"))
)
def test_any_chunk_size_gives_the_same_result(chunk_rows, chunk_cols):
    p = make_problem(seed=2)
    args = (p["hidden"], p["weight"], p["bias"])

    def loss(*a, rows, cols):
        out = fused.fused_linear_kd(
            *a[:2], p["t_logits"], bias=a[2], temperature=TAU, chunk_rows=rows, chunk_cols=cols
        )
        return jnp.sum(out * jnp.arange(N))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    value, grads = grad(*args, rows=chunk_rows, cols=chunk_cols)
    value_ref, grads_ref = grad(*args, rows=CHUNK, cols=CHUNK_COLS)
    assert_close(value, value_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)


def test_hta_kl_values_and_weights_match_float64_reference():
    p = make_problem(seed=3)
    logits = np.asarray(p["hidden"] @ p["weight"] + p["bias"], np.float64)
    t = np.asarray(p["t_logits"], np.float64)
    w_head, w_tail = ref_weights_exact(logits, t, TAU, 0.5)
    expected = w_head * ref_fkl(logits, t, TAU) + w_tail * ref_rkl(logits, t, TAU)
    for path in ("sort", "threshold"):
        value, w = fused.fused_linear_kd_with_weight(
            p["hidden"],
            p["weight"],
            p["t_logits"],
            bias=p["bias"],
            temperature=TAU,
            mu=0.5,
            path=path,
            chunk_rows=CHUNK,
        )
        np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(w), w_head, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the teacher and the hyperparameters get no gradient; jit; traced hyperparameters
# ----------------------------------------------------------------------------------------------


def test_teacher_gets_no_gradient():
    p = make_problem(seed=4)

    def loss_logits(t_logits):
        return fused.fused_linear_kd(p["hidden"], p["weight"], t_logits, chunk_rows=CHUNK).sum()

    np.testing.assert_array_equal(np.asarray(jax.grad(loss_logits)(p["t_logits"])), 0.0)

    def loss_linear(t_linear):
        return fused.fused_linear_kd(p["hidden"], p["weight"], t_linear, chunk_rows=CHUNK).sum()

    for g in jax.grad(loss_linear)(p["t_linear"]):
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_jit_with_traced_hyperparameters():
    p = make_problem(seed=5)

    @jax.jit
    def step(hidden, weight, t_logits, temperature, head_ratio):
        def loss(h_, w_):
            out = fused.fused_linear_kd(
                h_,
                w_,
                t_logits,
                method="fixed_ratio",
                head_ratio=head_ratio,
                temperature=temperature,
                chunk_rows=CHUNK,
            )
            return out.sum()

        return jax.value_and_grad(loss, argnums=(0, 1))(hidden, weight)

    value, grads = step(p["hidden"], p["weight"], p["t_logits"], TAU, 0.3)

    def ref(h_, w_):
        return losses.fixed_ratio_kl(h_ @ w_, p["t_logits"], head_ratio=0.3, temperature=TAU).sum()

    value_ref, grads_ref = jax.value_and_grad(ref, argnums=(0, 1))(p["hidden"], p["weight"])
    assert_close(value, value_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)
    # a traced temperature is a constant of the loss: no gradient
    g_tau = jax.grad(
        lambda tau: fused.fused_linear_kd(
            p["hidden"], p["weight"], p["t_logits"], temperature=tau, chunk_rows=CHUNK
        ).sum()
    )(TAU)
    assert float(g_tau) == 0.0


# ----------------------------------------------------------------------------------------------
# sequences with a padding mask; reductions; masked vocabulary; bf16
# ----------------------------------------------------------------------------------------------


def _padded_sequences(seed: int) -> tuple[dict, jax.Array, dict]:
    """[2, 5] sequences: the problem, its padding mask and a copy with NaN in the padding."""
    p = make_problem(lead=(2, 5), seed=seed)
    where = jnp.asarray([[True] * 5, [True, True, True, False, False]])
    garbage = dict(p)
    garbage["hidden"] = jnp.where(where[..., None], p["hidden"], jnp.nan)
    garbage["t_logits"] = jnp.where(where[..., None], p["t_logits"], jnp.nan)
    t_hidden, t_weight, t_bias = p["t_linear"]
    garbage["t_linear"] = (jnp.where(where[..., None], t_hidden, jnp.nan), t_weight, t_bias)
    return p, where, garbage


@pytest.mark.parametrize("case", ("fkl", "hta_kl", "hta_kl_weight_temperature"))
@pytest.mark.parametrize("teacher_form", ("logits", "linear"))
def test_sequences_with_padding_mask(case, teacher_form):
    kwargs, loss = CASES[case]
    p, where, garbage = _padded_sequences(seed=6)
    key = "t_logits" if teacher_form == "logits" else "t_linear"
    ref = _unfused_fn(loss, teacher_logits(p, teacher_form), where=where)
    args = (p["hidden"], p["weight"], p["bias"])
    value_ref, vjp_ref = jax.vjp(ref, *args)
    ct = jnp.asarray(np.random.default_rng(7).standard_normal((2, 5)), jnp.float32)
    grads_ref = vjp_ref(ct)
    for inputs in (p, garbage):  # padding may hold anything, NaN included
        ours = _fused_fn(kwargs, inputs[key], where=where)
        value, vjp_ours = jax.vjp(ours, inputs["hidden"], p["weight"], p["bias"])
        assert value.shape == (2, 5)
        assert_close(value, value_ref)
        np.testing.assert_array_equal(np.asarray(value)[1, 3:], 0.0)
        grads = vjp_ours(ct)
        np.testing.assert_array_equal(np.asarray(grads[0])[1, 3:], 0.0)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert_close(g, g_ref)


@pytest.mark.parametrize("backward", ("sweep", "forward"))
@pytest.mark.parametrize("reduction", ("sum", "mean"))
@pytest.mark.parametrize("case", ("rkl", "hta_kl"))
def test_reductions_equal_the_reduced_materialised_loss(reduction, case, backward):
    kwargs, loss = CASES[case]
    p, where, garbage = _padded_sequences(seed=8)
    count = jnp.sum(where)

    def ref(hidden, weight, bias):
        total = jnp.sum(_unfused_fn(loss, p["t_logits"], where=where)(hidden, weight, bias))
        return total if reduction == "sum" else total / count

    ours = _fused_fn(
        kwargs, garbage["t_logits"], where=where, reduction=reduction, backward=backward
    )
    args = (p["hidden"], p["weight"], p["bias"])
    value, grads = jax.value_and_grad(ours, argnums=(0, 1, 2))(*args)
    value_ref, grads_ref = jax.value_and_grad(ref, argnums=(0, 1, 2))(*args)
    assert value.shape == ()
    assert_close(value, value_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert_close(g, g_ref)
    # an upstream factor scales the gradient (computed in the forward pass or in the sweep)
    g3 = jax.grad(lambda *a: 3.0 * ours(*a), argnums=1)(*args)
    assert_close(g3, 3.0 * grads_ref[1])


def test_head_weights_output_matches_hta_kl_with_weight():
    p = make_problem(seed=9)
    logits = p["hidden"] @ p["weight"] + p["bias"]
    kd_ref, w_ref = losses.hta_kl_with_weight(logits, p["t_logits"], temperature=TAU, mu=0.5)
    kd, w = fused.fused_linear_kd_with_weight(
        p["hidden"], p["weight"], p["t_logits"], bias=p["bias"], temperature=TAU, chunk_rows=CHUNK
    )
    assert_close(kd, kd_ref)
    assert_close(w, w_ref)
    _, w_fixed = fused.fused_linear_kd_with_weight(
        p["hidden"], p["weight"], p["t_logits"], method="fixed_ratio", head_ratio=0.3
    )
    np.testing.assert_allclose(np.asarray(w_fixed), 0.3, rtol=1e-7)


@pytest.mark.parametrize("case", ("symmetric", "hta_kl"))
def test_masked_vocabulary_through_the_bias(case):
    # -inf bias entries mask classes (padded vocabulary); the teacher masks the same ones
    kwargs, loss = CASES[case]
    p = make_problem(seed=10)
    masked = np.zeros(V, bool)
    masked[[3, 17, 40]] = True
    bias = jnp.where(masked, -jnp.inf, p["bias"])
    t_logits = jnp.where(masked, -jnp.inf, p["t_logits"])
    ours, ref = _fused_fn(kwargs, t_logits), _unfused_fn(loss, t_logits)
    args = (p["hidden"], p["weight"], bias)
    value, grads = jax.value_and_grad(lambda *a: ours(*a).sum(), argnums=(0, 1, 2))(*args)
    value_ref, grads_ref = jax.value_and_grad(lambda *a: ref(*a).sum(), argnums=(0, 1, 2))(*args)
    assert np.isfinite(float(value))
    assert_close(value, value_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert np.all(np.isfinite(np.asarray(g)))
        assert_close(g, g_ref)
    np.testing.assert_array_equal(np.asarray(grads[1])[:, masked], 0.0)


@pytest.mark.parametrize("case", ("fkl", "hta_kl"))
def test_bf16_inputs_accumulate_in_float32(case):
    kwargs, loss = CASES[case]
    p = make_problem(seed=11, dtype=jnp.bfloat16)
    ours = _fused_fn(kwargs, p["t_logits"])
    args = (p["hidden"], p["weight"], p["bias"])
    value, grads = jax.value_and_grad(lambda *a: ours(*a).sum(), argnums=(0, 1, 2))(*args)
    # the reference: the same bf16 numbers, upcast, logits in float32
    up = [jnp.asarray(a, jnp.float32) for a in args]
    ref = _unfused_fn(loss, jnp.asarray(p["t_logits"], jnp.float32))
    value_ref, grads_ref = jax.value_and_grad(lambda *a: ref(*a).sum(), argnums=(0, 1, 2))(*up)
    assert value.dtype == jnp.float32
    assert_close(value, value_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.dtype == jnp.bfloat16
        assert_close(g, g_ref, rtol=2e-2)  # the gradient passes through bf16 matmuls


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------


def test_chunk_rows_for():
    assert fused.chunk_rows_for(4096, 32000, backend="cpu") == 64
    assert fused.chunk_rows_for(4096, 32000, backend="gpu") == 512
    assert fused.chunk_rows_for(16384, 128256, backend="gpu") == 256
    assert fused.chunk_rows_for(10, 32000, backend="gpu") == 10
    assert fused.chunk_rows_for(100, 10**8, backend="cpu") == 1


def test_chunk_cols_for():
    assert fused.chunk_cols_for(4096, 32000, backend="cpu") == 1024
    assert fused.chunk_cols_for(4096, 32000, backend="gpu") == 4096
    assert fused.chunk_cols_for(16384, 128256, backend="gpu") == 1024
    assert fused.chunk_cols_for(3000, 32000, backend="cpu") == 1280  # a multiple of 128
    assert fused.chunk_cols_for(10**6, 32000, backend="cpu") == 128  # at least 128
    assert fused.chunk_cols_for(4096, 50, backend="cpu") == 50


def _call(**overrides):
    p = make_problem(lead=(4,))
    args = {"hidden": p["hidden"], "weight": p["weight"], "teacher": p["t_logits"]} | overrides
    return fused.fused_linear_kd(**args)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"method": "ce"}, "unknown method"),
        ({"reduction": "max"}, "unknown reduction"),
        ({"backward": "both"}, "unknown backward"),
        ({"backward": "forward"}, "scalar loss"),
        ({"chunk_rows": 0}, "chunk_rows"),
        ({"chunk_cols": 1.5}, "chunk_cols"),
        ({"weight": jnp.zeros((H + 1, V))}, "hidden"),
        ({"teacher": jnp.zeros((4, V + 1))}, "teacher logits"),
        ({"teacher": (jnp.zeros((3, H_T)), jnp.zeros((H_T, V)))}, "teacher hidden"),
        ({"teacher": (jnp.zeros((4, H_T)), jnp.zeros((H_T, V)), jnp.zeros(2))}, "teacher bias"),
        ({"bias": jnp.zeros(V + 1)}, "bias"),
        ({"where": jnp.ones(5, bool)}, "where"),
        ({"hidden": jnp.zeros((0, H)), "teacher": jnp.zeros((0, V))}, "no rows"),
        ({"method": "fixed_ratio"}, "head_ratio"),
        ({"mu": 0.0}, "mu"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_bad_arguments_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)
