"""baseline: the source model's outputs and task metrics on the validation set,
computed once and shared by every target's validation."""

from __future__ import annotations

import json

import numpy as np

from edgebuild.worker import StepContext


def run_tf(ctx: StepContext) -> dict:
    from edgebuild.evaluation import load_validation_set
    from edgebuild.toolchains import tf as tfc

    truth = load_validation_set(ctx.inputs, ctx.params)
    ctx.progress(f"running the source model on {len(truth.x)} samples")
    names, outputs = tfc.run_source(ctx.inputs["model"], ctx.params["source_format"], truth.x,
                                    ctx.outdir.parent, trust=tfc.step_trust(ctx))
    return _save(ctx, truth, names, outputs)


def run_onnx(ctx: StepContext) -> dict:
    from edgebuild.evaluation import load_validation_set
    from edgebuild.toolchains.onnx_external_data import source_model
    from edgebuild.toolchains.runtimes import OnnxModel

    truth = load_validation_set(ctx.inputs, ctx.params)
    model = OnnxModel(source_model(ctx))
    per_sample = []
    for i, sample in enumerate(truth.x):
        per_sample.append(model(sample))
        ctx.progress("running the source model", i + 1, len(truth.x))
    outputs = [np.stack([s[i] for s in per_sample]) for i in range(len(model.output_names))]
    return _save(ctx, truth, model.output_names, outputs)


def _save(ctx: StepContext, truth, names: list[str], outputs: list[np.ndarray]) -> dict:
    from edgebuild.evaluation import OUTPUT_NAMES, class_names, decoder, task_metrics

    # One .npy per output: byte-stable, unlike .npz, whose zip members carry the time.
    folder = ctx.output("outputs", "reference")
    folder.mkdir()
    for i, array in enumerate(outputs):
        np.save(folder / f"output_{i}.npy", array.astype(np.float32))
    # Validation matches the artifact's outputs to these by name (and picks a
    # classifier_output's class scores by it).
    (folder / OUTPUT_NAMES).write_text(json.dumps(list(names)))
    metrics = task_metrics(ctx.params["task"], truth, outputs,
                           decoder(ctx.inputs, ctx.params, names), class_names(ctx.inputs))
    ctx.output("metrics", "metrics.json").write_text(
        json.dumps({"metrics": metrics, "samples": len(truth.x)}, sort_keys=True))
    return {"outputs": names, "shapes": [list(a.shape) for a in outputs],
            "samples": int(outputs[0].shape[0]), "metrics": metrics}
