"""tensorflow-model-optimization behind a small adapter.

Choose the layers a recipe names, check that tfmot supports each of them before any
work starts, wrap them, fine-tune or apply one-shot, strip the wrappers, and measure
what was done. tfmot's own errors never reach the user raw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgebuild.errors import StepError
from edgebuild.toolchains import tfmot_layers

CENTROID_INIT = {"kmeans++": "KMEANS_PLUS_PLUS", "linear": "LINEAR",
                 "density": "DENSITY_BASED", "random": "RANDOM"}


@dataclass
class FineTuning:
    """How to fine-tune: data, loss and schedule. epochs == 0 means one-shot."""

    x: np.ndarray | None
    y: object  # array, list of arrays (multi-output), or None
    loss: str
    epochs: int
    batch_size: int
    learning_rate: float | None
    on_epoch: Callable[[int, dict], None] = lambda epoch, logs: None

    @property
    def steps(self) -> int:
        if not self.epochs:
            return 0
        return self.epochs * -(-len(self.x) // self.batch_size)


def deterministic(seed: int) -> None:
    """Seeded, deterministic TensorFlow: the same inputs give the same bytes."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# -- layer selection ---------------------------------------------------------------

def leaf_layers(model) -> list:
    """Every layer that does work, looking inside nested models, without InputLayers."""
    import tf_keras

    found = []
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            found += leaf_layers(layer)
        elif not isinstance(layer, tf_keras.layers.InputLayer):
            found.append(layer)
    return found


def described(layer) -> tfmot_layers.Layer:
    """A loaded layer as tfmot_layers sees it (the lists planning checks too)."""
    import tf_keras

    kind = type(layer).__name__
    cells = ()
    if isinstance(layer, tf_keras.layers.Bidirectional):
        cells = (type(layer.forward_layer.cell).__name__,
                 type(layer.backward_layer.cell).__name__)
    elif isinstance(getattr(layer, "cell", None), tf_keras.layers.StackedRNNCells):
        cells = tuple(type(cell).__name__ for cell in layer.cell.cells)
    elif getattr(layer, "cell", None) is not None:
        cells = (type(layer.cell).__name__,)
    builtin = type(layer).__module__.split(".")[0] in ("tf_keras", "keras")
    return tfmot_layers.Layer(layer.name, kind, builtin, bool(layer.trainable_weights), cells)


def choose(model, slot: str, include, exclude, supports: Callable) -> list:
    """The layers to wrap; a StepError naming every unsupported layer if any is chosen.
    `supports`: tfmot's own protocols (PrunableLayer, ClusterableLayer), which custom
    layers may implement; built-in layers are checked against tfmot_layers."""
    layers = leaf_layers(model)
    described_layers = [described(layer) for layer in layers]
    problem = tfmot_layers.unmatched(described_layers, include, exclude)
    if problem:
        raise StepError(f"{slot}.{problem[0]}: {problem[1]}")
    chosen = [(layer, info) for layer, info in zip(layers, described_layers, strict=True)
              if tfmot_layers.is_chosen(info, include, exclude)]
    unsupported = [info for layer, info in chosen
                   if not supports(layer) and tfmot_layers.supports(slot, info) is not True]
    if unsupported:
        raise StepError(tfmot_layers.refusal(slot, unsupported))
    return [layer for layer, _ in chosen]


def _rewrap(model, chosen: list, wrap: Callable):
    """Clone `model`, wrapping the chosen layers (nested models are cloned through)."""
    import tf_keras

    chosen_ids = {id(layer) for layer in chosen}

    def clone(layer):
        # As tfmot does: wrappers take the original layer (and so its weights), the
        # other layers are reused as they are.
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=clone)
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        return wrap(layer) if id(layer) in chosen_ids else layer

    try:
        return tf_keras.models.clone_model(model, clone_function=clone)
    except ValueError as exc:  # tfmot's refusal of a layer it has no rule for
        raise StepError(f"tfmot refused the model: {exc}") from None


# -- prune -------------------------------------------------------------------------

def prune(model, params: dict, tuning: FineTuning):
    """prune_low_magnitude on the chosen layers; returns the stripped model."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prunable_layer,
        pruning_wrapper,
    )

    def supports(layer) -> bool:
        return (isinstance(layer, prunable_layer.PrunableLayer)
                or hasattr(layer, "get_prunable_weights"))

    chosen = choose(model, "prune", params["include"], params["exclude"], supports)
    schedule = _schedule(params, tuning)
    m_by_n = tuple(int(v) for v in params["structure"].split(":")) if params["structure"] \
        else None
    sparsity = tfmot.sparsity.keras
    wrapped = _rewrap(model, chosen, lambda layer: sparsity.prune_low_magnitude(
        layer, pruning_schedule=schedule, sparsity_m_by_n=m_by_n))
    wrappers = [layer for layer in leaf_layers(wrapped)
                if isinstance(layer, pruning_wrapper.PruneLowMagnitude)]
    if tuning.epochs:
        _fit(wrapped, tuning, [sparsity.UpdatePruningStep()])
    else:
        # One-shot: set the masks once, at the step where the schedule prunes
        # (m:n masks are computed at step 1), and apply them.
        step = 1 if m_by_n else params["begin_step"]
        for layer in wrappers:
            layer.pruning_step.assign(step)
            layer.pruning_obj.conditional_mask_update()
            layer.pruning_obj.weight_mask_op()
    return sparsity.strip_pruning(wrapped), [layer.layer.name for layer in wrappers]


def _schedule(params: dict, tuning: FineTuning):
    from tensorflow_model_optimization.sparsity import keras as sparsity

    begin = params["begin_step"]
    if not tuning.epochs:  # one-shot: prune once, to the target
        return sparsity.ConstantSparsity(params["sparsity"], begin_step=begin, frequency=1)
    # UpdatePruningStep advances its counter before the masks are updated, so the
    # schedule first sees step 1: shift it, or a constant schedule starting at 0 (and
    # updating every 100 steps) would never prune a short fine-tune at all.
    begin += 1
    last = tuning.steps
    if begin >= last:
        raise StepError(f"prune.begin_step {begin} is not before the last fine-tuning step "
                        f"({last}: {tuning.epochs} epochs of {tuning.steps // tuning.epochs} "
                        "steps); lower begin_step or train longer")
    frequency = params["frequency"]
    if params["schedule"] == "constant":
        return sparsity.ConstantSparsity(params["sparsity"], begin_step=begin,
                                         frequency=frequency)
    end = min(params["end_step"] or last, last)
    # Masks only change every `frequency` steps, so the ramp must land on one of them
    # or the final sparsity is never reached; short fine-tunes get a finer frequency.
    frequency = max(1, min(frequency, (end - begin) // 10 or 1))
    end = begin + (end - begin) // frequency * frequency
    return sparsity.PolynomialDecay(initial_sparsity=params["initial_sparsity"],
                                    final_sparsity=params["sparsity"], begin_step=begin,
                                    end_step=end, frequency=frequency)


# -- cluster -----------------------------------------------------------------------

def cluster(model, params: dict, tuning: FineTuning):
    """cluster_weights on the chosen layers (sparsity-preserving if asked); stripped."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.clustering.keras import clusterable_layer
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import (
        cluster as experimental,
    )

    def supports(layer) -> bool:
        return isinstance(layer, clusterable_layer.ClusterableLayer)

    chosen = choose(model, "cluster", params["include"], params["exclude"], supports)
    chosen = [layer for layer in chosen if layer.trainable_weights]  # nothing to share
    init = tfmot.clustering.keras.CentroidInitialization[CENTROID_INIT[params["init"]]]
    wrapped = _rewrap(model, chosen, lambda layer: experimental.cluster_weights(
        layer, number_of_clusters=params["clusters"], cluster_centroids_init=init,
        preserve_sparsity=params["preserve_sparsity"]))
    if tuning.epochs:
        _fit(wrapped, tuning, [])
    return tfmot.clustering.keras.strip_clustering(wrapped), [layer.name for layer in chosen]


# -- quantization-aware training ---------------------------------------------------

def quantize_aware(model, tuning: FineTuning, keep_float: tuple[str, ...], after: list[str]):
    """tfmot's quantization-aware training, fine-tuned. Every layer its 8-bit registry
    supports gets fake quantization, except those keep_float names (matched as the
    plan matches them); after prune or cluster, the scheme that keeps their zeros and
    shared values (tfmot.experimental.combine). Returns the model with its wrappers, for the TFLite
    converter, and the layers tfmot cannot wrap (the converter calibrates these on
    data.calibration instead)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    quantization = tfmot.quantization.keras
    unwrapped = []

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if tfmot_layers.matches(described(layer), keep_float):  # as the plan judged it
            return layer
        # BatchNormalization has no rule of its own: tfmot's transforms fold it into the
        # convolution before it, which they only do for annotated layers.
        if not (registry.supports(layer) or
                isinstance(layer, tf_keras.layers.BatchNormalization)):
            unwrapped.append(layer.name)
            return layer
        return quantization.quantize_annotate_layer(layer)

    try:
        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        with quantization.quantize_scope():
            trained = quantization.quantize_apply(annotated, _preserving_scheme(after))
    except (ValueError, RuntimeError) as exc:  # tfmot's refusals of a model it cannot wrap
        raise StepError(f"tfmot refused the model for quantization-aware training: {exc}") \
            from None
    if tuning.epochs:
        _fit(trained, tuning, [])
    return trained, unwrapped


def _preserving_scheme(after: list[str]):
    """Sparsity-preserving QAT after prune, and after cluster the cluster-preserving
    scheme, which keeps zeros too (PCQAT; tfmot's default for it even without pruning);
    tfmot's default 8-bit scheme otherwise."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_scheme,
    )

    combine = tfmot.experimental.combine
    if "cluster" in after:
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    if "prune" in after:
        return combine.Default8BitPrunePreserveQuantizeScheme()
    return default_8bit_quantize_scheme.Default8BitQuantizeScheme()


# -- fine-tuning and measurement ----------------------------------------------------

def _fit(model, tuning: FineTuning, callbacks: list) -> None:
    import tf_keras

    class Progress(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            tuning.on_epoch(epoch, logs or {})

    # BatchNorm stays in inference mode: re-estimating its statistics from a small
    # fine-tuning set shifts every activation (the Keras fine-tuning advice).
    for layer in leaf_layers(model):
        if isinstance(getattr(layer, "layer", layer), tf_keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=tf_keras.optimizers.Adam(tuning.learning_rate),
                  loss=_loss(model, tuning.loss))
    model.fit(tuning.x, tuning.y, batch_size=tuning.batch_size, epochs=tuning.epochs,
              shuffle=True, verbose=0, callbacks=[*callbacks, Progress()])


def _loss(model, name: str):
    import tf_keras

    if name in ("mse", "distill"):
        return tf_keras.losses.MeanSquaredError()
    # Classifiers end in a softmax or in logits; the loss must know which.
    last = model.layers[-1]
    last = getattr(last, "layer", last)  # through a tfmot wrapper
    probabilities = (type(last).__name__ == "Softmax"
                     or getattr(getattr(last, "activation", None), "__name__", "") == "softmax")
    cls = {"sparse_categorical_crossentropy": tf_keras.losses.SparseCategoricalCrossentropy,
           "categorical_crossentropy": tf_keras.losses.CategoricalCrossentropy}[name]
    return cls(from_logits=not probabilities)


def weight_stats(model, names: list[str]) -> dict[str, dict]:
    """Per named layer: the sparsity and the most unique values of any kernel."""
    stats = {}
    for layer in leaf_layers(model):
        if layer.name not in names:
            continue
        kernels = [w.numpy() for w in layer.weights if len(w.shape) >= 2]
        if not kernels:
            continue
        flat = np.concatenate([k.ravel() for k in kernels])
        stats[layer.name] = {"weights": int(flat.size),
                             "sparsity": round(float(np.mean(flat == 0)), 4),
                             "unique": int(max(np.unique(k).size for k in kernels))}
    return stats
