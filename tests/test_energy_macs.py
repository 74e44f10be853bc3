"""Tests for htakl_jax.energy.count_macs / total_macs (per-image MAC counts; tracing only)."""

import flax.linen as nn
import pytest

from htakl_jax.energy import count_macs, total_macs
from htakl_jax.models import get_model
from htakl_jax.neurons import LIF


def conv_macs(hw, c_in, c_out, k=3):
    """MACs of a conv with a ``hw x hw`` output map."""
    return hw * hw * c_out * k * k * c_in


def resnet19_reference(classes):
    """Closed-form MACs of tdBN ResNet-19 at 32x32 (docs/method.md §3), layer by layer."""
    stem = conv_macs(32, 3, 128)
    stage1 = 6 * conv_macs(32, 128, 128)
    stage2 = conv_macs(16, 128, 256) + 5 * conv_macs(16, 256, 256) + conv_macs(16, 128, 256, 1)
    stage3 = conv_macs(8, 256, 512) + 3 * conv_macs(8, 512, 512) + conv_macs(8, 256, 512, 1)
    return stem + stage1 + stage2 + stage3 + 512 * 256 + 256 * classes


def resnet20_reference(classes):
    pre = conv_macs(32, 3, 64) + 2 * conv_macs(32, 64, 64)  # then 2x2 avg pool -> 16x16
    stages = 4 * conv_macs(16, 64, 64)
    for hw, c_in, c in ((8, 64, 128), (4, 128, 256), (2, 256, 512)):
        stages += conv_macs(hw, c_in, c) + 3 * conv_macs(hw, c, c) + conv_macs(hw, c_in, c, 1)
    return pre + stages + 512 * classes


def vgg16_reference(classes):
    convs = conv_macs(32, 3, 64) + conv_macs(32, 64, 64)
    convs += conv_macs(16, 64, 128) + conv_macs(16, 128, 128)
    convs += conv_macs(8, 128, 256) + 2 * conv_macs(8, 256, 256)
    convs += conv_macs(4, 256, 512) + 2 * conv_macs(4, 512, 512)
    convs += 3 * conv_macs(2, 512, 512)
    return convs + 512 * 512 + 512 * 512 + 512 * classes


@pytest.mark.parametrize(
    "name,reference,spec",
    [
        ("resnet19", resnet19_reference, 2.29e9),
        ("resnet20", resnet20_reference, 216.5e6),
        ("vgg16", vgg16_reference, 314e6),
    ],
)
def test_full_width_macs_match_spec(name, reference, spec):
    for classes in (10, 100):
        model = get_model(name, num_classes=classes, spiking=True)
        records = count_macs(model, (32, 32, 3))
        total = total_macs(records)
        assert total == reference(classes)
        assert abs(total - spec) / spec < 0.02
        # only the direct-encoding conv sees the image; everything after it sees spikes
        assert [r.spike_input for r in records] == [False] + [True] * (len(records) - 1)
        assert records[0].kind == "conv" and records[-1].kind == "dense"
        assert records[-1].path == "head" and records[-1].output_shape == (classes,)
        assert total_macs(records, spike_input=False) == conv_macs(
            32, 3, records[0].output_shape[-1]
        )


def test_vgg16_ops_at_t4_round_to_the_papers_1_26g():
    model = get_model("vgg16", num_classes=100, spiking=True)
    assert round(4 * total_macs(model) / 1e9, 2) == 1.26


def test_counts_are_per_timestep_and_scale_with_resolution():
    t1 = get_model("resnet19", num_classes=10, spiking=True, timesteps=1)
    t6 = get_model("resnet19", num_classes=10, spiking=True, timesteps=6)
    assert count_macs(t1) == count_macs(t6)
    r32, r64 = count_macs(t1, (32, 32, 3)), count_macs(t1, (64, 64, 3))
    for a, b in zip(r32, r64, strict=True):
        assert b.macs == (4 * a.macs if a.kind == "conv" else a.macs)


def test_ann_has_no_spike_inputs_and_same_counts():
    ann = count_macs(get_model("resnet20", num_classes=10, spiking=False))
    snn = count_macs(get_model("resnet20", num_classes=10, spiking=True))
    assert not any(r.spike_input for r in ann) and all(r.source is None for r in ann)
    assert [(r.path, r.macs) for r in ann] == [(r.path, r.macs) for r in snn]


def test_sources_name_the_producing_neuron():
    records = {r.path: r for r in count_macs(get_model("resnet19", num_classes=10, spiking=True))}
    assert records["stem/conv"].source is None
    assert records["stage1_block0/conv1"].source == "stem_act"
    assert records["stage1_block0/conv2"].source == "stage1_block0/act1"
    # the shortcut conv reads the block input, the previous block's output spikes
    assert records["stage2_block0/shortcut_conv"].source == "stage1_block2/act2"
    assert records["stage2_block0/conv1"].source == "stage1_block2/act2"
    assert records["head"].source == "fc1_act"


class TinyNet(nn.Module):
    """conv 3x3/2 (6x6x2 -> 3x3x4) -> LIF -> grouped conv 3x3 (groups 2) -> flatten -> dense 5."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="c1")(x)
        x = LIF(name="lif")(x[None])[0]
        x = nn.Conv(6, (3, 3), feature_group_count=2, padding="SAME", name="c2")(x)
        return nn.Dense(5, name="fc")(x.reshape(x.shape[0], -1))


def test_hand_counted_tiny_network():
    records = count_macs(TinyNet(), (6, 6, 2))
    assert [r.path for r in records] == ["c1", "c2", "fc"]
    assert [r.kind for r in records] == ["conv", "conv", "dense"]
    # c1: 3*3*4 outputs x (3*3*2) fan-in; c2: 3*3*6 outputs x (3*3*4/2); fc: 5 x 54
    assert [r.macs for r in records] == [36 * 18, 54 * 18, 5 * 54]
    assert [r.spike_input for r in records] == [False, True, True]
    assert [r.source for r in records] == [None, "lif", "lif"]
    assert [r.output_shape for r in records] == [(3, 3, 4), (3, 3, 6), (5,)]
    assert total_macs(records) == 648 + 972 + 270
    assert total_macs(records, spike_input=True) == 972 + 270
    assert total_macs(TinyNet(), (6, 6, 2), spike_input=False) == 648


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(TinyNet(), (6, 6))
