"""TensorFlow arithmetic that gives the same bits on every x86 CPU.

TensorFlow's float32 kernels do not. Measured on an Intel Xeon (AVX-512) against
QEMU's AMD EPYC and Intel Haswell models, and on one core against two:
- Eigen's float rsqrt and reciprocal use the CPU's approximate instructions (RSQRTPS,
  RCPPS) refined by one Newton step, and Intel and AMD approximate differently.
  BatchNormalization goes through rsqrt: the TFLite converter folds
  gamma * rsqrt(variance + epsilon) into the weights of the convolution before it,
  and Keras computes it on every call.
- float32 products go through oneDNN's sgemm or Eigen's own kernels, whose blocking
  follows the instruction set, the vendor, the cache sizes and the thread count, and
  so does the order in which each sum is added up.

So the converters get `exact_batch_norm`'s copy of a model, in which each
BatchNormalization is x * scale + offset with scale and offset computed by numpy in
float64 and rounded once (sqrt and division are correctly rounded everywhere); the
converter folds those into the convolution as before. Source outputs and fine-tuning
run on `float64_copy`, where the same machine-to-machine differences stay around
1e-16, far below float32's resolution, so rounding the result to float32 gives the
same bits everywhere. The TFLite converter's calibration (LiteRT's float kernels) gave
the same bytes on every CPU model tried, so it needs neither.

Only tf_keras (Keras 2) models can be copied like this. Keras 3 models and SavedModels
run as they are: their BatchNormalization folds, outputs and so their bytes may
differ between CPU vendors (the README's guarantees say so).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def exact_batch_norm(model):
    """A float32 copy of a tf_keras model whose BatchNormalization layers are their
    exact inference-time affine map; the model itself if it has none (or cannot be
    copied, as subclassed models cannot)."""
    import tf_keras

    if not any(isinstance(layer, tf_keras.layers.BatchNormalization)
               for layer in _leaves(model)):
        return model
    affine = _affine_layer_class()

    def clone(layer):
        if isinstance(layer, tf_keras.layers.BatchNormalization) and _foldable(layer):
            scale, offset = _scale_and_offset(layer)
            return affine(scale, offset, layer.axis[0], name=layer.name)
        return _fresh(layer, clone)

    try:
        copy = tf_keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError):
        return model
    for old, new in zip(_leaves(model), _leaves(copy), strict=True):
        if not isinstance(new, affine):
            new.set_weights(old.get_weights())
    return copy


def float64_copy(model):
    """The tf_keras model with every layer computing in float64 (weights cast exactly),
    or None where a layer cannot (custom layers that ignore their dtype, subclassed
    models). Use it under `float64_keras()` to wrap or train it."""
    return _cast(model, "float64")


def float32_copy(model):
    """The float64 model back in float32: each weight rounded once."""
    return _cast(model, "float32")


@contextmanager
def float64_keras() -> Iterator[None]:
    """Keras's default float type is float64 inside: layers made here (tfmot's wrappers,
    their masks and centroids) compute in float64 too. tfmot's centroid initialisers
    are float32-only (a float32 op, float32 constants), so they get the weights as
    float32, which they are, and their centroids are widened exactly."""
    import tf_keras
    from tensorflow_model_optimization.python.core.clustering.keras import (
        cluster_wrapper,
        clustering_centroids,
    )

    factory = clustering_centroids.CentroidsInitializerFactory
    saved_floatx, saved_getter = tf_keras.backend.floatx(), factory.__dict__[_GETTER]
    saved_tf = cluster_wrapper.tf
    tf_keras.backend.set_floatx("float64")
    setattr(factory, _GETTER, classmethod(
        lambda cls, method: _float32_initialiser(saved_getter.__func__(cls, method))))
    # The clustering wrapper casts its sparsity masks to float32 by name.
    cluster_wrapper.tf = _Float32IsFloat64(saved_tf)
    try:
        yield
    finally:
        tf_keras.backend.set_floatx(saved_floatx)
        setattr(factory, _GETTER, saved_getter)
        cluster_wrapper.tf = saved_tf


class _Float32IsFloat64:
    """A module's view of TensorFlow in which tf.float32 is tf.float64."""

    def __init__(self, tf):
        self._tf = tf
        self.float32 = tf.float64

    def __getattr__(self, name):
        return getattr(self._tf, name)


_GETTER = "get_centroid_initializer"


def _float32_initialiser(initialiser):
    import tensorflow as tf

    def make(weights, *args, **kwargs):
        inner = initialiser(tf.cast(weights, tf.float32), *args, **kwargs)

        class Widened:
            def get_cluster_centroids(self):
                return tf.cast(inner.get_cluster_centroids(), weights.dtype)

        return Widened()

    return make


# -- copying models -------------------------------------------------------------------

def _cast(model, dtype: str):
    import tf_keras

    def clone(layer):
        return _fresh(layer, clone, dtype)

    inputs = [tf_keras.Input(batch_shape=tensor.shape, name=layer_name,
                             dtype=dtype if tensor.dtype.is_floating else tensor.dtype)
              for tensor, layer_name in zip(model.inputs, model.input_names, strict=True)]
    try:
        copy = tf_keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
        copy.set_weights([w.astype(dtype) for w in model.get_weights()])
    except (ValueError, TypeError, NotImplementedError, AttributeError):
        return None
    if any(w.dtype != dtype for w in copy.weights) or copy.outputs[0].dtype != dtype:
        return None  # a layer kept its own type
    return copy


def _fresh(layer, clone, dtype: str | None = None):
    """A new layer like `layer` (nested models cloned through with `clone`)."""
    import tf_keras

    if isinstance(layer, tf_keras.Model):
        inputs = None
        if dtype:
            inputs = [tf_keras.Input(batch_shape=t.shape,
                                     dtype=dtype if t.dtype.is_floating else t.dtype)
                      for t in layer.inputs]
        return tf_keras.models.clone_model(layer, input_tensors=inputs, clone_function=clone)
    config = layer.get_config()
    if dtype:
        config["dtype"] = dtype
    return layer.__class__.from_config(config)


def _leaves(model) -> list:
    """Layers in weight order, looking inside nested models."""
    import tf_keras

    found = []
    for layer in model.layers:
        found += _leaves(layer) if isinstance(layer, tf_keras.Model) else [layer]
    return found


# -- BatchNormalization as an exact affine map ------------------------------------------

def _foldable(layer) -> bool:
    return len(layer.axis) == 1 and not getattr(layer, "renorm", False)


def _scale_and_offset(layer) -> tuple[np.ndarray, np.ndarray]:
    """gamma / sqrt(variance + epsilon) and beta - mean * scale, in float64, rounded once."""
    mean = layer.moving_mean.numpy().astype(np.float64)
    variance = layer.moving_variance.numpy().astype(np.float64)
    gamma = layer.gamma.numpy().astype(np.float64) if layer.scale else 1.0
    beta = layer.beta.numpy().astype(np.float64) if layer.center else 0.0
    scale = gamma / np.sqrt(variance + layer.epsilon)
    offset = beta - mean * scale
    return scale.astype(np.float32), np.broadcast_to(offset, scale.shape).astype(np.float32)


def _affine_layer_class():
    import tensorflow as tf
    import tf_keras

    class ExactBatchNorm(tf_keras.layers.Layer):
        """x * scale + offset along one axis: a BatchNormalization at inference."""

        def __init__(self, scale, offset, axis: int, **kwargs):
            super().__init__(trainable=False, **kwargs)
            self.scale, self.offset, self.axis = scale, offset, axis

        def call(self, x):
            shape = [1] * x.shape.rank
            shape[self.axis] = -1
            return (x * tf.reshape(tf.constant(self.scale, x.dtype), shape)
                    + tf.reshape(tf.constant(self.offset, x.dtype), shape))

    return ExactBatchNorm
