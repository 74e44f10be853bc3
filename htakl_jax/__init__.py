"""htakl_jax: HTA-KL knowledge distillation from ANN teachers into spiking neural networks.

Submodules are imported on demand so that `import htakl_jax.losses` stays light
(jax and numpy only): other projects can reuse the loss without Flax or TensorFlow.
"""

__version__ = "0.1.0"
