"""VGG-16 with BatchNorm; one definition for ANN and SNN."""

from __future__ import annotations

from htakl_jax.layers import DirectEncoder, global_avg_pool, max_pool2
from htakl_jax.models.base import Network

# Channels per 3x3 conv; "M" is a 2x2 max pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(Network):
    """13 conv3x3-BN-act layers (64,64,M,128,128,M,256x3,M,512x3,M,512x3,M), global average pool,
    then the classic CIFAR VGG classifier FC 512->512, act, FC 512->512, act, FC 512->classes
    (features: the second 512-d activation; no dropout).

    MACs per 32x32 image at full width: 313.72 M (10 classes) / 313.77 M (100 classes); times T=4
    this is the paper's 1.26 G OPs (the plain 512->classes head would give 1.25 G, a 4096-wide one
    1.33 G). At 32x32 the last map is 1x1, so the global pool is the usual flatten; at 64x64 it
    averages the 2x2 map (same parameters at every resolution).
    """

    def _forward(self, x, ops, *, train, timesteps):
        convs = [c for c in VGG16_CFG if c != "M"]
        x = DirectEncoder(ops, self.width(convs[0]), name="conv1")(
            x, train=train, timesteps=timesteps
        )
        x = ops.act(x, timesteps, "act1")
        i, stage = 1, 1
        for c, after in zip(VGG16_CFG[1:], VGG16_CFG[2:] + ("M",), strict=True):
            if c == "M":
                x = max_pool2(x)
                stage += 1
                continue
            i += 1
            tap = f"stage{stage}" if after == "M" else None  # the conv block's last unit
            x = self.conv_bn_act(x, ops, i, self.width(c), train, timesteps, tap)
        x = global_avg_pool(x)
        for j in (1, 2):
            x = ops.act(ops.dense(self.width(512), name=f"fc{j}")(x), timesteps, f"fc{j}_act")
        return ops.dense(self.num_classes, name="head")(x), x
