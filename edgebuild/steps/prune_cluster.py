"""prune and cluster: tfmot rewrites of the Keras model, before quantization.

Each step takes a tf_keras model and gives one back (an .h5, whose bytes are
reproducible), fine-tuned on data.train when the recipe gives it, one-shot
otherwise. What it did, measured on the stripped model, goes into the step's facts
and from there into the lock file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from edgebuild.worker import StepContext


def prune(ctx: StepContext) -> dict:
    from edgebuild.toolchains import tfmot

    params = ctx.params
    what = params["structure"] or f"{params['sparsity']:g} sparsity"
    model, tuning = start_fine_tuning(ctx, f"pruning to {what}")
    pruned, names = _in_float64(tfmot.prune, model, params, tuning)
    layers = tfmot.weight_stats(pruned, names)
    total = sum(s["weights"] for s in layers.values())
    zeros = sum(s["weights"] * s["sparsity"] for s in layers.values())
    if total and zeros / total < params["sparsity"] / 2:
        from edgebuild.errors import StepError

        raise StepError(f"pruning reached {zeros / total:.2f} sparsity, far from the target "
                        f"{params['sparsity']:g}: the schedule never updated the masks "
                        "(begin_step or frequency beyond the fine-tuning steps?)")
    _save(pruned, ctx.output("model", "model.h5"))
    return {"facts": {"sparsity": round(zeros / total, 4) if total else 0.0,
                      "layers": {n: {"sparsity": s["sparsity"]} for n, s in layers.items()},
                      "fine_tuned": bool(tuning.epochs)}}


def cluster(ctx: StepContext) -> dict:
    from edgebuild.toolchains import tfmot

    params = ctx.params
    model, tuning = start_fine_tuning(
        ctx, f"clustering into {params['clusters']} centroids per layer")
    clustered, names = _in_float64(tfmot.cluster, model, params, tuning)
    layers = tfmot.weight_stats(clustered, names)
    _save(clustered, ctx.output("model", "model.h5"))
    return {"facts": {"layers": {n: {"unique": s["unique"], "sparsity": s["sparsity"]}
                                 for n, s in layers.items()},
                      "fine_tuned": bool(tuning.epochs)}}


def _in_float64(rewrite, model, params: dict, tuning):
    """Run a tfmot rewrite, fine-tuning included, on the model in float64 and round the
    result to float32 once: float32 training gives other bits on other CPUs (see
    toolchains/tf_numerics). A model that cannot compute in float64 stays float32."""
    from edgebuild.toolchains.tf_numerics import float32_copy, float64_copy, float64_keras

    wide = float64_copy(model)
    if wide is None:
        print("float64 copy not possible: fine-tuning in float32, whose bits depend on the CPU")
        return rewrite(model, params, tuning)
    with float64_keras():
        rewritten, names = rewrite(wide, params, tuning)
    narrow = float32_copy(rewritten)
    if narrow is None:
        from edgebuild.errors import StepError

        raise StepError("the model was fine-tuned in float64 and cannot be copied back to "
                        "float32; please report this model")
    return narrow, names


def start_fine_tuning(ctx: StepContext, doing: str, epochs: int | None = None,
                      learning_rate: float | None = None):
    """Seeded, deterministic TensorFlow; the input model; what to fine-tune on.
    `epochs` and `learning_rate`: the step's own (params) unless given."""
    from edgebuild.toolchains import tfmot
    from edgebuild.toolchains.tf import load_keras, step_trust

    params = ctx.params
    epochs = params["epochs"] if epochs is None else epochs
    train = params.get("train") or {}
    tfmot.deterministic(train.get("seed", 0))
    model = load_keras(ctx.inputs["model"], step_trust(ctx))
    x = y = None
    if epochs:
        x, y = _training_data(ctx, train)
        ctx.progress(f"{doing}: fine-tuning {epochs} epochs on {len(x)} samples", 0, epochs)
    else:
        ctx.progress(f"{doing}, one-shot")

    def on_epoch(epoch: int, logs: dict) -> None:
        # Counted in epochs: tfmot.FineTuning reports epochs, not batches.
        ctx.progress(f"{doing}: epoch {epoch + 1}, loss {logs.get('loss', 0):.4f}",
                     epoch + 1, epochs)

    tuning = tfmot.FineTuning(
        x=x, y=y, loss=train.get("loss", "mse"), epochs=epochs,
        batch_size=train.get("batch_size", 32), on_epoch=on_epoch,
        learning_rate=params["learning_rate"] if learning_rate is None else learning_rate)
    return model, tuning


def _training_data(ctx: StepContext, train: dict):
    from edgebuild.data import load_labelled
    from edgebuild.errors import StepError
    from edgebuild.toolchains.tf import run_source, step_trust

    names = None
    if "labels" in ctx.inputs:
        names = [line.strip() for line in ctx.inputs["labels"].read_text().splitlines()
                 if line.strip()]
    x, y = load_labelled(ctx.inputs["train"], train, names)
    if train["loss"] == "distill":
        # The source model's own outputs are the targets: no labels needed.
        _, y = run_source(ctx.inputs["teacher"], "keras", x, ctx.outdir.parent,
                          trust=step_trust(ctx))
        y = y[0] if len(y) == 1 else y
    elif y is None:
        raise StepError(f"data.train: loss {train['loss']} needs labels, and "
                        f"{ctx.inputs['train'].name} has none (an .npz needs y; a folder "
                        "needs class sub-folders); or use loss: distill")
    return x, y


def _save(model, path: Path) -> None:
    # HDF5, not .keras: tf_keras writes .keras zips with a timestamp, .h5 files are
    # byte-identical for identical weights.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is a legacy format"
        model.save(path, include_optimizer=False)
