"""What a step leaves in a worker process that the next step must not see.

A warm worker (pool.py) runs many steps; each must start as it would in a fresh
process. Only toolchains a step actually imported are touched, so resetting costs
nothing in a worker that never loaded TensorFlow.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field


@dataclass
class GlobalState:
    """What a fresh process starts with, where a step can change it."""

    keras_objects: dict = field(default_factory=dict)   # tf_keras's registered objects
    keras3_objects: dict = field(default_factory=dict)  # Keras 3's


def snapshot() -> GlobalState:
    state = GlobalState()
    if "tf_keras" in sys.modules:
        state.keras_objects = dict(_tf_keras_registry())
    if "keras" in sys.modules and _is_keras3():
        state.keras3_objects = dict(_keras3_registry())
    return state


def reset(before: GlobalState) -> None:
    """Back to a fresh process's state: Keras sessions, names, float type and
    registered objects; TensorFlow's global seed and op determinism; the seeds of
    Python's and numpy's generators (as a new process draws them). tf2onnx's node
    numbering is restarted by its adapter. Anything missed here shows as changed
    bytes: tests/test_worker_pool.py and the committed lock files, rebuilt by warm
    workers, are the check."""
    if "tf_keras" in sys.modules:
        import tf_keras

        tf_keras.backend.clear_session()  # graphs, layer-name counters, learning phase
        tf_keras.backend.set_floatx("float32")
        tf_keras.mixed_precision.set_global_policy(None)  # None: follow floatx, as at start
        _restore(_tf_keras_registry(), before.keras_objects)
    if "keras" in sys.modules and _is_keras3():
        import keras

        keras.backend.clear_session()
        keras.config.set_floatx("float32")
        _restore(_keras3_registry(), before.keras3_objects)
    if "tensorflow" in sys.modules:
        import tensorflow as tf
        from tensorflow.python.framework import config  # the public API has no "off"

        tf.random.set_seed(None)  # also empties the cache of seeded random kernels
        config.disable_op_determinism()
    random.seed()
    if "numpy" in sys.modules:
        import numpy as np

        np.random.seed()


def _restore(registry: dict, saved: dict) -> None:
    registry.clear()
    registry.update(saved)


def _tf_keras_registry() -> dict:
    from tf_keras.src.saving import object_registration

    return object_registration._GLOBAL_CUSTOM_OBJECTS


def _keras3_registry() -> dict:
    from keras.src.saving import object_registration

    return object_registration.GLOBAL_CUSTOM_OBJECTS


def _is_keras3() -> bool:
    return str(getattr(sys.modules["keras"], "__version__", "")).startswith("3")
