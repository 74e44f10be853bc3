"""SEW-ResNet-18/34 (Fang et al. 2021) with the ADD connection; one definition for ANN and SNN.

SEW basic block: ``out = act(BN(conv(act(BN(conv(x)))))) + shortcut`` where the shortcut is the
identity, or ``act(BN(conv1x1(x)))`` when the shape changes: the activation comes *before* the add,
so in the SNN the block adds two spike maps (block outputs are integer spike sums, not 0/1). The ANN
variant is the same graph with ReLU.

Stem: for the 64x64 Tiny ImageNet (and 32x32 / 8x8) inputs these models are used with, the ImageNet
7x7/2 conv + max pool would leave a 2x2 map, so the stem is a 3x3 stride-1 conv at 64 channels with
no pool (the usual small-image ResNet stem); stages run at full, 1/2, 1/4, 1/8 resolution and a
global average pool feeds FC 512->classes (features: the pooled 512-d vector).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from htakl_jax.layers import DirectEncoder, LayerFactory, global_avg_pool
from htakl_jax.models.base import Network


class SEWBlock(nn.Module):
    """``[N, H, W, C_in] -> [N, H/s, W/s, features]`` (time-folded N)."""

    ops: LayerFactory
    features: int
    strides: int = 1
    tap: str | None = None  # the stage name when this block ends a stage

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, timesteps: int) -> jax.Array:
        # train / timesteps positional: Network.block's nn.remat marks them static by position.
        ops = self.ops
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = ops.conv(self.features, 1, self.strides, name="shortcut_conv")(x)
            shortcut = ops.batch_norm(train, name="shortcut_bn")(shortcut)
            shortcut = ops.act(shortcut, timesteps, "shortcut_act")
        y = ops.conv(self.features, 3, self.strides, name="conv1")(x)
        y = ops.act(ops.batch_norm(train, name="bn1")(y), timesteps, "act1")
        y = ops.conv(self.features, 3, 1, name="conv2")(y)
        # A stage's output is the spike sum (rate) or its last LIF's input / membrane.
        spiking_rate = ops.spiking and ops.tap_kind == "rate"
        act_tap = None if spiking_rate or not ops.spiking else self.tap
        y = ops.act(ops.batch_norm(train, name="bn2")(y), timesteps, "act2", tap=act_tap)
        out = y + shortcut
        if self.tap is not None and (spiking_rate or not ops.spiking):
            ops.tap(out, timesteps, self.tap)
        return out


class SEWResNet(Network):
    """SEW-ResNet, ADD connection; ``blocks`` per stage: (2,2,2,2) = 18, (3,4,6,3) = 34 layers."""

    blocks: tuple[int, ...] = (2, 2, 2, 2)

    def _forward(self, x, ops, *, train, timesteps):
        x = DirectEncoder(ops, self.width(64), name="stem")(x, train=train, timesteps=timesteps)
        x = ops.act(x, timesteps, "stem_act")
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        block = self.block(SEWBlock)
        for s, (w, n, st) in enumerate(zip(widths, self.blocks, strides, strict=True)):
            for b in range(n):
                tap = f"stage{s + 1}" if b == n - 1 else None
                stride = st if b == 0 else 1
                name = f"stage{s + 1}_block{b}"
                x = block(ops, self.width(w), stride, tap, name=name)(x, train, timesteps)
        x = global_avg_pool(x)
        return ops.dense(self.num_classes, name="head")(x), x
