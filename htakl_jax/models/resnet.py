"""Spiking-ResNet style ResNet-19 (tdBN) and the paper's ResNet-20; one definition for ANN and SNN.

Basic block: conv3x3-BN-act-conv3x3-BN, plus the shortcut (identity, or 1x1 conv-BN when the shape
changes), then the activation after the add. In the SNN the shortcut adds input *spikes* to the
membrane input of the block's last LIF.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from htakl_jax.layers import DirectEncoder, LayerFactory, avg_pool2, global_avg_pool
from htakl_jax.models.base import Network


class BasicBlock(nn.Module):
    """``[N, H, W, C_in] -> [N, H/s, W/s, features]`` (time-folded N)."""

    ops: LayerFactory
    features: int
    strides: int = 1
    tap: str | None = None  # the stage name when this block ends a stage

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, timesteps: int) -> jax.Array:
        # train / timesteps positional: Network.block's nn.remat marks them static by position.
        ops = self.ops
        # Shortcut first: count_macs attributes a layer's input to the last LIF run before it.
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = ops.conv(self.features, 1, self.strides, name="shortcut_conv")(x)
            shortcut = ops.batch_norm(train, name="shortcut_bn")(shortcut)
        y = ops.conv(self.features, 3, self.strides, name="conv1")(x)
        y = ops.act(ops.batch_norm(train, name="bn1")(y), timesteps, "act1")
        y = ops.conv(self.features, 3, 1, name="conv2")(y)
        y = ops.batch_norm(train, name="bn2")(y)
        return ops.act(y + shortcut, timesteps, "act2", tap=self.tap)


def _stages(x, net: Network, ops, widths, blocks, strides, *, train, timesteps):
    block = net.block(BasicBlock)
    for s, (w, n, st) in enumerate(zip(widths, blocks, strides, strict=True)):
        for b in range(n):
            tap = f"stage{s + 1}" if b == n - 1 else None
            stride = st if b == 0 else 1
            name = f"stage{s + 1}_block{b}"
            x = block(ops, net.width(w), stride, tap, name=name)(x, train, timesteps)
    return x


class ResNet19(Network):
    """tdBN ResNet-19: 3x3 conv 128 stem; basic-block stages [3, 3, 2] at 128/256/512 with strides
    1/2/2; global average pool; FC 512->256; activation; FC 256->classes (features: the 256-d
    activation). 2.29 G MACs per 32x32 image at full width."""

    def _forward(self, x, ops, *, train, timesteps):
        x = DirectEncoder(ops, self.width(128), name="stem")(x, train=train, timesteps=timesteps)
        x = ops.act(x, timesteps, "stem_act")
        x = _stages(
            x, self, ops, (128, 256, 512), (3, 3, 2), (1, 2, 2), train=train, timesteps=timesteps
        )
        x = global_avg_pool(x)
        x = ops.act(ops.dense(self.width(256), name="fc1")(x), timesteps, "fc1_act")
        return ops.dense(self.num_classes, name="head")(x), x


class ResNet20(Network):
    """The HTA-KL paper's ResNet-20 (not the 0.27 M-parameter CIFAR ResNet-20): three 3x3 convs at
    64 (BN + activation each) and a 2x2 average pool; four stages of 2 basic blocks at
    64/128/256/512 with strides 1/2/2/2; global average pool; FC 512->classes (features: the pooled
    512-d vector). 216 M MACs per 32x32 image at full width."""

    def _forward(self, x, ops, *, train, timesteps):
        w = self.width(64)
        x = self.encode(x, ops, w, ("stem", "stem_act"), train, timesteps)
        for i in (2, 3):
            x = self.conv_bn_act(x, ops, i, w, train, timesteps)
        x = avg_pool2(x)
        x = _stages(
            x,
            self,
            ops,
            (64, 128, 256, 512),
            (2, 2, 2, 2),
            (1, 2, 2, 2),
            train=train,
            timesteps=timesteps,
        )
        x = global_avg_pool(x)
        return ops.dense(self.num_classes, name="head")(x), x
