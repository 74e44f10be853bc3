"""Firing rates, synaptic operations / energy, tables and figures of htakl_jax.analysis."""

from __future__ import annotations

import csv
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from htakl_jax import runs
from htakl_jax.analysis import ablation, endpoints, plots, report, stats, tables, tsne
from htakl_jax.analysis.firing import spike_stats
from htakl_jax.energy import LayerMACs, energy_mj, estimate_energy
from htakl_jax.layers import global_avg_pool, repeat_over_time
from htakl_jax.models import get_model
from htakl_jax.models.base import Network

# ----------------------------------------------------------------------------- energy arithmetic

# The paper's Table III: (ACs, MACs, energy in mJ as printed there).
PAPER_TABLE3 = [
    (2.21e9, 26.68e6, "2.11173"),
    (2.78e9, 26.68e6, "2.62473"),
    (1.85e9, 26.68e6, "1.78773"),
    (2.11e9, 26.68e6, "2.02173"),  # HTA-KL ResNet-19
    (213.25e6, 53.99e6, "0.440279"),
    (238.88e6, 53.99e6, "0.463346"),
    (214.3e6, 53.99e6, "0.441224"),
    (198.2e6, 53.99e6, "0.426734"),  # HTA-KL ResNet-20
    (196.63e6, 274.24e6, "1.438471"),
    (217.22e6, 274.24e6, "1.457002"),
    (202.53e6, 274.24e6, "1.443781"),
    (199.39e6, 274.24e6, "1.440955"),  # HTA-KL VGG-16
]


@pytest.mark.parametrize("acs,macs,printed_mj", PAPER_TABLE3)
def test_energy_reproduces_paper_table3(acs, macs, printed_mj):
    # Equal to the paper's value rounded at its last printed digit.
    half_ulp = 0.5 * 10.0 ** -len(printed_mj.split(".")[1])
    assert energy_mj(acs, macs) == pytest.approx(float(printed_mj), abs=half_ulp * 1.0001)


def test_energy_hta_kl_resnet19_value():
    # 0.9 pJ * 2.11e9 + 4.6 pJ * 26.68e6 = 2.021728e9 pJ = 2.021728 mJ
    assert energy_mj(2.11e9, 26.68e6) == pytest.approx(2.021728, rel=1e-12)
    assert tables.format_energy(energy_mj(2.11e9, 26.68e6)) == "2.02173mJ"


def test_energy_per_op_costs_are_configurable():
    assert energy_mj(1e9, 0, e_ac_pj=1.0) == pytest.approx(1.0)
    assert energy_mj(0, 1e9, e_mac_pj=2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="acs"):
        energy_mj(-1.0, 0.0)


def test_estimate_energy_by_hand():
    records = [
        LayerMACs("stem/conv", "conv", 100, False, None, (2, 2, 25)),
        LayerMACs("conv2", "conv", 50, True, "act1", (2, 2, 2)),
        LayerMACs("head", "dense", 10, True, "act2", (10,)),
    ]
    est = estimate_energy(records, {"conv2": 0.2, "head": 0.5}, 4)
    # ACs: 50 * 0.2 * 4 + 10 * 0.5 * 4 = 60; MACs: the first conv once per image = 100.
    assert est.acs == pytest.approx(60.0)
    assert est.macs == pytest.approx(100.0)
    assert est.ops == pytest.approx(160 * 4)
    assert est.energy_mj == pytest.approx((0.9 * 60 + 4.6 * 100) * 1e-9)
    assert [x.acs for x in est.layers] == pytest.approx([0.0, 40.0, 20.0])
    with pytest.raises(ValueError, match="head"):
        estimate_energy(records, {"conv2": 0.2}, 4)
    with pytest.raises(ValueError, match="timesteps"):
        estimate_energy(records, {"conv2": 0.2, "head": 0.5}, 0)


# ----------------------------------------------------------------------------- hand-checked SNN


def lif_reference(current_T: np.ndarray, tau=2.0, v_th=1.0) -> np.ndarray:
    """float64 loop of the hard-reset LIF of docs/method.md (v_reset 0, decay_input) over axis 0."""
    v = np.zeros(current_T.shape[1:])
    out = []
    for x in current_T:
        h = v + (x - v) / tau
        s = (h >= v_th).astype(np.float64)
        v = h * (1 - s)
        out.append(s)
    return np.stack(out)


class TwoLayerSNN(Network):
    """1x1 conv on the image -> LIF 'lif1' -> 1x1 conv -> LIF 'lif2' -> global pool -> dense."""

    def _forward(self, x, ops, *, train, timesteps):
        y = ops.conv(2, 1, name="conv0")(x)
        s1 = ops.act(repeat_over_time(y, timesteps), timesteps, "lif1")
        s2 = ops.act(ops.conv(2, 1, name="conv1")(s1), timesteps, "lif2")
        f = global_avg_pool(s2)
        return ops.dense(3, name="head")(f), f


T = 4


@pytest.fixture(scope="module")
def hand_net():
    model = TwoLayerSNN(num_classes=3, spiking=True, timesteps=T)
    # Image [2, 2, 2, 3]; conv0 copies channels 0, 1; conv1 scales lif1's spikes.
    images = np.array(
        [
            [[[2.0, 1.5, 9], [1.0, 0.0, 9]], [[1.6, 2.2, 9], [0.4, 1.2, 9]]],
            [[[0.0, 0.0, 9], [3.0, 1.5, 9]], [[1.5, 1.5, 9], [2.0, 0.9, 9]]],
        ]
    )
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)), train=False)
    k0 = np.zeros((1, 1, 3, 2))
    k0[0, 0, 0, 0] = k0[0, 0, 1, 1] = 1.0
    k1 = 1.5 * np.eye(2)[None, None]
    params = {
        "conv0": {"kernel": jnp.asarray(k0, jnp.float32)},
        "conv1": {"kernel": jnp.asarray(k1, jnp.float32)},
        "head": variables["params"]["head"],
    }
    stats = spike_stats(model, {"params": params}, images.astype(np.float32), batch_size=2)
    # Reference: currents are constant over time.
    c1 = np.broadcast_to(images[..., :2], (T,) + images[..., :2].shape)
    s1 = lif_reference(c1)
    s2 = lif_reference(1.5 * s1)
    return stats, s1, s2


def test_hand_network_spike_counts(hand_net):
    stats, s1, s2 = hand_net
    assert s1.sum() > 0 and s2.sum() > 0 and s1.mean() < 1  # not a vacuous network
    assert list(stats.spikes) == ["lif1", "lif2"]  # run order
    assert stats.spikes["lif1"] == s1.sum()
    assert stats.spikes["lif2"] == s2.sum()
    neurons = T * 2 * (2 * 2 * 2)  # T x examples x (H x W x C)
    assert stats.neuron_steps == {"lif1": neurons, "lif2": neurons}
    rates = stats.layer_rates()
    assert rates["lif1"] == pytest.approx(s1.mean())
    assert rates["lif2"] == pytest.approx(s2.mean())
    assert stats.overall_rate == pytest.approx((s1.sum() + s2.sum()) / (2 * neurons))
    assert stats.pre_classifier_layer == "lif2"
    assert stats.pre_classifier_rate == pytest.approx(s2.mean())


def test_hand_network_synaptic_operations(hand_net):
    stats, s1, s2 = hand_net
    assert stats.input_rates() == pytest.approx({"conv1": s1.mean(), "head": s2.mean()})
    est = estimate_energy(stats.layers, stats.input_rates(), T)
    conv0_macs = 2 * 2 * 2 * 3  # per image: output elements x fan-in (1x1x3)
    conv1_macs = 2 * 2 * 2 * 2
    head_macs = 3 * 2
    assert [r.macs for r in stats.layers] == [conv0_macs, conv1_macs, head_macs]
    assert est.macs == conv0_macs
    expected_acs = conv1_macs * s1.mean() * T + head_macs * s2.mean() * T
    assert est.acs == pytest.approx(expected_acs)
    # conv1 (1x1, 2 -> 2 channels): one accumulate per arriving spike and outgoing synapse.
    assert est.layers[1].acs == pytest.approx(s1.sum() / 2 * 2)  # per image (2 images), fan-out 2
    assert est.energy_mj == pytest.approx((0.9 * expected_acs + 4.6 * conv0_macs) * 1e-9)


def test_spike_stats_batching_does_not_change_counts():
    model = TwoLayerSNN(num_classes=3, spiking=True, timesteps=2)
    x = np.asarray(jax.random.normal(jax.random.key(3), (5, 2, 2, 3)) * 2 + 1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)), train=False)
    a = spike_stats(model, variables, x, batch_size=5)
    b = spike_stats(model, variables, x, batch_size=2)
    assert a.spikes == pytest.approx(b.spikes)
    assert a.input_rates() == pytest.approx(b.input_rates())
    assert a.num_examples == b.num_examples == 5


def test_spike_stats_rejects_bad_input():
    ann = TwoLayerSNN(num_classes=3, spiking=False)
    with pytest.raises(ValueError, match="spiking"):
        spike_stats(ann, {}, np.zeros((1, 2, 2, 3), np.float32))
    snn = TwoLayerSNN(num_classes=3, spiking=True)
    with pytest.raises(ValueError, match="images_NHWC"):
        spike_stats(snn, {}, np.zeros((2, 2, 3), np.float32))


def test_resnet_input_rates_equal_source_firing_rates():
    # In ResNet-20 every spike-fed layer consumes one LIF's output, directly or through an average
    # pool (which keeps the mean), so its measured input rate is that LIF's firing rate.
    model = get_model("resnet20", num_classes=4, spiking=True, timesteps=2, width_mult=1 / 16)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    stats = spike_stats(model, variables, np.asarray(x))
    rates = stats.layer_rates()
    assert max(rates.values()) > 0
    spike_fed = [r for r in stats.layers if r.spike_input]
    assert len(spike_fed) == len(stats.layers) - 1
    for r in spike_fed:
        assert stats.input_rates()[r.path] == pytest.approx(rates[r.source], abs=1e-6), r.path
    assert stats.pre_classifier_layer == "stage4_block1/act2"


# ----------------------------------------------------------------------------- tables


RUNS = [
    {"method": "hta_kl", "architecture": "resnet20", "timesteps": 2, "seed": 0, "accuracy": 0.90},
    {"method": "hta_kl", "architecture": "resnet20", "timesteps": 2, "seed": 1, "accuracy": 0.92},
    {"method": "hta_kl", "architecture": "resnet20", "timesteps": 4, "seed": 0, "accuracy": 0.95},
    {"method": "fkl", "architecture": "resnet20", "timesteps": 4, "seed": 0, "accuracy": 0.9412},
]


def test_table1_markdown():
    headers, rows = tables.table1(RUNS, teacher={"resnet20": [0.9572]})
    # std of (0.90, 0.92) with ddof=1 is 0.0141421...
    assert tables.markdown_table(headers, rows) == (
        "| Method | Architecture | T=2 | T=4 |\n"
        "|---|---|---|---|\n"
        "| Teacher ANN | resnet20 | 95.72 | - |\n"
        "| HTA-KL | resnet20 | 91.00 ± 1.41 | 95.00 |\n"
        "| FKL | resnet20 | - | 94.12 |\n"
    )


def test_table3_paper_row():
    run = {
        "method": "hta_kl",
        "architecture": "ResNet19",
        "firing_rate": 0.2744,
        "ops": 9.15e9,
        "acs": 2.11e9,
        "macs": 26.68e6,
        "energy_mj": energy_mj(2.11e9, 26.68e6),
    }
    headers, rows = tables.table3([run])
    assert headers == ["Method", "Architecture", "Firing Rate", "OPs", "ACs", "MACs", "Energy"]
    assert rows == [["HTA-KL", "ResNet19", "27.44%", "9.15G", "2.11G", "26.68M", "2.02173mJ"]]


def test_csv_and_json_writers(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}]
    tables.write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="") as f:
        got = list(csv.reader(f))
    assert got == [["a", "b", "c"], ["1", "0.5", ""], ["2", "", "x"]]
    runs.write_json(tmp_path / "t.json", {"rows": rows, "np": np.float32(0.25)})
    with open(tmp_path / "t.json") as f:
        assert json.load(f) == {"rows": rows, "np": 0.25}


def test_formatting_helpers():
    assert tables.format_count(865.98e6) == "865.98M"
    assert tables.format_count(9.15e9) == "9.15G"
    assert tables.format_energy(8.32282e-5) == "83.2282nJ"
    assert tables.format_mean_std([0.5]) == "50.00"
    m, s = tables.mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(math.sqrt(7 / 3))
    with pytest.raises(ValueError, match="row"):
        tables.markdown_table(["a", "b"], [[1]])


# ----------------------------------------------------------------------------- figures


def test_weight_trajectory_keeps_last_record_per_epoch():
    recs = [
        {"epoch": 1, "train_w_head": 0.7, "train_w_tail": 0.3},
        {"epoch": 2, "train_w_head": 0.1, "train_w_tail": 0.9},
        {"epoch": 2, "train_w_head": 0.6, "train_w_tail": 0.4},  # resumed run repeats epoch 2
    ]
    tr = ablation.weight_trajectory(recs)
    np.testing.assert_array_equal(tr["epoch"], [1, 2])
    np.testing.assert_allclose(tr["w_head"], [0.7, 0.6])
    np.testing.assert_allclose(tr["w_tail"], [0.3, 0.4])
    with pytest.raises(ValueError, match="train_w_head"):
        ablation.weight_trajectory([{"epoch": 1}])


def test_tsne_separates_distinct_clusters():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 0.1, (20, 8)), rng.normal(5, 0.1, (20, 8))])
    emb = tsne.tsne_embed(f, perplexity=5)
    a, b = emb[:20], emb[20:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    spread = max(
        np.linalg.norm(a - a.mean(0), axis=1).max(), np.linalg.norm(b - b.mean(0), axis=1).max()
    )
    assert gap > 2 * spread


def test_tsne_of_identical_rows_is_the_origin():
    # A silent penultimate layer gives all-zero features; scikit-learn would crash on them.
    np.testing.assert_array_equal(tsne.tsne_embed(np.zeros((10, 4))), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        tsne.tsne_embed(np.full((5, 2), np.nan))


def test_figures_are_written(tmp_path):
    labels = np.repeat(np.arange(2), 5)
    feats = np.random.default_rng(0).normal(size=(10, 4)) + labels[:, None]
    paths = [tmp_path / n for n in ("tsne.png", "sweep.png", "w.png", "rates.png", "acc.png")]
    tsne.plot_tsne({"teacher": feats, "student": feats[:, :2]}, labels, paths[0], perplexity=3)
    ablation.plot_ratio_sweep(
        [0, 0.5, 1], [0.5, 0.6, 0.55], [0.01, 0, 0], paths[1], adaptive=(0.62, 0.01)
    )
    ablation.plot_weight_trajectory(
        {"hta": {"epoch": np.arange(3), "w_head": np.ones(3) * 0.6, "w_tail": np.ones(3) * 0.4}},
        paths[2],
    )
    plots.plot_firing_rates({"a": {"l1": 0.2, "l2": 0.1}, "b": {"l1": 0.3}}, paths[3])
    plots.plot_accuracy_vs_timesteps(
        {"a": ([1, 2], [0.5, 0.6], None)}, paths[4], teacher_accuracy=0.7
    )
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    with pytest.raises(ValueError, match="rows"):
        tsne.plot_tsne({"t": feats}, labels[:4])


def test_training_curves_of_teacher_and_student(tmp_path):
    config = ml_collections.ConfigDict({"student": {"teacher_checkpoint": ""}})
    teacher = [
        {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.3, "eval_accuracy": None},
        {"epoch": 2, "train_loss": 1.0, "train_accuracy": 0.6, "eval_accuracy": 0.55},
    ]
    student = [{"epoch": 1, "train_loss": 3.0, "train_accuracy": 0.2, "eval_accuracy": 0.25}]
    for phase, records in (("teacher", teacher), ("student", student)):
        (tmp_path / phase).mkdir()
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (tmp_path / phase / "metrics.jsonl").write_text(lines)
    assert report.training_records(config, str(tmp_path)) == {
        "teacher": teacher,
        "student": student,
    }
    path = report.write_training_curves(config, str(tmp_path), str(tmp_path / "analysis"))
    assert path == str(tmp_path / "analysis" / report.CURVES_FILE)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = plots.plot_training_curves({"teacher": teacher, "student": student})
    ax_loss, ax_acc = fig.axes
    assert [line.get_label() for line in ax_loss.get_lines()] == ["teacher", "student"]
    acc_labels = [line.get_label() for line in ax_acc.get_lines()]
    assert acc_labels == ["teacher train", "teacher eval", "student train", "student eval"]
    np.testing.assert_allclose(ax_acc.get_lines()[1].get_xydata(), [[2, 55.0]])
    assert report.write_training_curves(config, str(tmp_path / "none"), str(tmp_path)) is None


def test_paired_stats_hand_computed_t_interval():
    """Three paired differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 (tables)."""
    s = stats.paired_stats([1.0, 2.0, 3.0])
    half = 4.302653 / np.sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.low == pytest.approx(2 - half, abs=1e-5) and s.high == pytest.approx(
        2 + half, abs=1e-5
    )
    assert not s.detected and stats.verdict(s) == "not detected (95% CI [-0.48, 4.48])"
    tight = stats.paired_stats([1.9, 2.0, 2.1])  # sd 0.1: [1.75, 2.25]
    assert tight.detected and stats.verdict(tight) == "detected (95% CI [1.75, 2.25])"
    assert stats.verdict(stats.paired_stats([0.5])) == "no interval (1 seed)"
    with pytest.raises(ValueError, match="non-empty"):
        stats.paired_stats([])


def test_main_accuracies_leave_out_ablations_and_other_timesteps(tmp_path):
    """An ablation cell shares its method and seed with a main arm (HTA-KL with weights at
    tau = 1) or is keyed by its own method (fixed ratio); neither, nor a cell of another T,
    may replace the main arm's accuracy."""
    rows = [
        {"method": "hta_kl", "timesteps": 2, "seed": 0, "accuracy_T2": 0.40},
        {"method": "fkl", "timesteps": 2, "seed": 0, "accuracy_T2": 0.41},
        {
            "method": "hta_kl",
            "timesteps": 2,
            "seed": 0,
            "weight_temperature": 1.0,
            "accuracy_T2": 0.1,
        },
        {
            "method": "fixed_ratio",
            "timesteps": 2,
            "seed": 0,
            "head_ratio": 0.42,
            "accuracy_T2": 0.2,
        },
        {"method": "fkl", "timesteps": 1, "seed": 0, "accuracy_T1": 0.3, "accuracy_T2": 0.3},
    ]
    tables.write_csv(tmp_path / "results.csv", rows)
    read = tables.read_csv(tmp_path / "results.csv")
    assert tables.main_accuracies(read, 2) == {("hta_kl", 0): 0.40, ("fkl", 0): 0.41}
    assert tables.main_accuracies(read, 1) == {("fkl", 0): 0.3}


def test_welch_stats_hand_computed_interval():
    """a = 2, 4 (mean 3, var 2), b = 0, 1, 2 (mean 1, var 1): SE^2 = 2/2 + 1/3 = 4/3 and
    Welch-Satterthwaite df = (4/3)^2 / (1^2 / 1 + (1/3)^2 / 2) = 32/19."""
    w = stats.welch_stats([2.0, 4.0], [0.0, 1.0, 2.0])
    half = scipy_stats.t.ppf(0.975, 32 / 19) * np.sqrt(4 / 3)
    assert (w.n_a, w.n_b) == (2, 3) and w.mean == pytest.approx(2.0)
    assert w.df == pytest.approx(32 / 19)
    assert (w.low, w.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert not w.detected  # half = 5.9: the interval holds 0
    assert stats.welch_stats([10.0, 10.1, 9.9], [0.0, 0.1, -0.1]).detected
    with pytest.raises(ValueError, match="b must be 1-D, finite"):
        stats.welch_stats([1.0, 2.0], [1.0])


def test_seeds_for_power_against_the_normal_approximation():
    # Paired t-test, two-sided 5%, 80% power: n ~ ((1.96 + 0.8416) sd / effect)^2 + ~2 for t.
    for sd in (1.0, 2.0, 3.0):
        n = stats.seeds_for_power(sd)
        approx = (2.8016 * sd) ** 2
        assert approx < n <= approx + 3, (sd, n)
    assert stats.seeds_for_power(1.0) == 10  # the textbook value for effect size 1
    assert stats.seeds_for_power(0.0) == 2
    # Power is monotone in n: n - 1 seeds fall short.
    n = stats.seeds_for_power(2.0)
    assert (
        stats.paired_t_power(n - 1, 2.0, 1.0, 0.05) < 0.8 <= stats.paired_t_power(n, 2.0, 1.0, 0.05)
    )


def test_paired_comparisons_pair_by_seed_per_endpoint():
    def row(arm, seed, acc, nll=None, t=1):
        r = {"arm": arm, "timesteps": t, "seed": seed, "accuracy": acc}
        return r | ({} if nll is None else {"nll": nll})

    rows = [row("FKL", s, a, n) for s, a, n in ((0, 0.50, 1.5), (1, 0.60, 1.4), (2, 0.55, 1.6))]
    hta = ((0, 0.52, 1.4), (1, 0.61, 1.3), (2, 0.58, None))
    rows += [row("HTA-KL", s, a, n) for s, a, n in hta]
    rows += [row("HTA-KL", 3, 0.9), row("CE", 0, 0.4, t=2)]  # no FKL partner: left out
    got = stats.paired_comparisons(rows, reference="FKL", endpoints=("accuracy", "nll"))
    assert [(r["arm"], r["endpoint"], r["n"]) for r in got] == [
        ("HTA-KL", "accuracy", 3),
        ("HTA-KL", "nll", 2),
    ]
    acc = got[0]
    diffs = np.array([2.0, 1.0, 3.0])  # percentage points, hand-computed per seed
    assert acc["mean"] == pytest.approx(diffs.mean()) and acc["std"] == pytest.approx(1.0)
    assert acc["unit"] == "pp" and acc["verdict"].startswith("not detected")
    assert got[1]["mean"] == pytest.approx(-0.1) and got[1]["seeds_needed"] is None


def test_endpoints_from_logits_match_float64_reference():
    rng = np.random.default_rng(0)
    s, t = 2.0 * rng.standard_normal((50, 7)), 3.0 * rng.standard_normal((50, 7))
    labels = rng.integers(0, 7, 50)
    got = endpoints.endpoints_from_logits(s.astype(np.float32), t.astype(np.float32), labels)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_q, log_p = log_softmax(s), log_softmax(t)
    assert got["examples"] == 50
    assert got["accuracy"] == np.mean(s.argmax(-1) == labels)
    assert got["teacher_agreement"] == np.mean(s.argmax(-1) == t.argmax(-1))
    nll = -log_q[np.arange(50), labels].mean()
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["kl_teacher_student"] == pytest.approx(kl, rel=1e-5)
    same = endpoints.endpoints_from_logits(t, t, labels)
    assert same["teacher_agreement"] == 1.0 and same["kl_teacher_student"] == pytest.approx(
        0, abs=1e-6
    )
    with pytest.raises(ValueError, match="labels"):
        endpoints.endpoints_from_logits(s, t, labels[:3])
