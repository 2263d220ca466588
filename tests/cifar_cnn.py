"""The small CNN of test_cifar_acceptance.py, trained in a process of its own.

Seeded, deterministic TensorFlow is process-wide state that the rest of a test
session should not inherit, so the test runs this file as a script:

    python tests/cifar_cnn.py TRAIN_NPZ OUT_KERAS [SEED [IMBALANCE]]

TRAIN_NPZ holds x (uint8 images, 32x32x3) and y (class indices); the model takes
pixel / 255 and ends in a softmax over 10 classes.
"""

from __future__ import annotations

import os
import sys

SCALE = 0.00392156862745098  # x = pixel / 255


def train(train_npz: str, out: str, seed: int = 0, imbalance: float = 1.0) -> None:
    """123k weights, nearly all in kernels, so that weights dominate the TFLite file.

    20 epochs with L2(1e-3) on every kernel: without weight decay the kernels stay
    close to their random initialization after so few steps, and magnitude pruning
    then removes as much signal as noise."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    with np.load(train_npz) as data:
        x, y = data["x"].astype(np.float32) * np.float32(SCALE), data["y"]
    layers, decay = keras.layers, keras.regularizers.L2(1e-3)

    def conv(filters: int) -> list:
        return [layers.Conv2D(filters, 3, padding="same", activation="relu",
                              kernel_regularizer=decay), layers.MaxPooling2D()]

    model = keras.Sequential([
        layers.Input((32, 32, 3), name="image"), *conv(32), *conv(64), *conv(64),
        layers.Flatten(),
        layers.Dense(64, activation="relu", kernel_regularizer=decay),
        layers.Dense(10, activation="softmax", kernel_regularizer=decay),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=20, shuffle=True, verbose=0)
    if imbalance != 1.0:
        unbalance_channels(model, imbalance)
    model.save(out)


def unbalance_channels(model, factor: float, per_layer: int = 3) -> None:
    """Give a few channels of each convolution `factor` times the range of the others,
    without changing what the model computes: ReLU and max pooling commute with a
    positive scale, so scaling a channel's kernel and bias by k and the next layer's
    weights from it by 1/k leaves every output as it was (up to float rounding).

    This is what folding BatchNorm into depthwise convolutions does to MobileNets:
    per-channel ranges that differ by orders of magnitude (Nagel et al., 2019, "Data-
    Free Quantization"). int8 activations have one scale per tensor, so the small
    channels get a few levels each, and post-training int8 loses accuracy; training
    with the quantization in the loop learns around it."""
    import numpy as np
    import tf_keras as keras

    rng = np.random.default_rng(0)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer, following in zip(convs[:-1], convs[1:], strict=True):
        kernel, bias = layer.get_weights()
        scale = np.ones(kernel.shape[-1], np.float32)
        scale[rng.choice(scale.size, per_layer, replace=False)] = factor
        next_kernel, next_bias = following.get_weights()
        layer.set_weights([kernel * scale, bias * scale])
        following.set_weights([next_kernel / scale[None, None, :, None], next_bias])


if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0,
          float(sys.argv[4]) if len(sys.argv) > 4 else 1.0)
