"""baseline: the source model's own outputs on the validation set, computed once and
shared by every target's validation."""

from __future__ import annotations

import numpy as np

from edgebuild.worker import StepContext


def run_tf(ctx: StepContext) -> dict:
    from edgebuild.data import load_samples
    from edgebuild.toolchains import tf as tfc

    x = load_samples(ctx.inputs["data"], ctx.params["data"])
    ctx.progress(f"running the source model on {len(x)} samples")
    names, outputs = tfc.run_source(ctx.inputs["model"], ctx.params["source_format"], x,
                                    ctx.outdir.parent)
    return _save(ctx, names, outputs)


def run_onnx(ctx: StepContext) -> dict:
    from edgebuild.data import load_samples
    from edgebuild.toolchains.runtimes import OnnxModel

    x = load_samples(ctx.inputs["data"], ctx.params["data"])
    ctx.progress(f"running the source model on {len(x)} samples")
    model = OnnxModel(ctx.inputs["model"])
    per_sample = [model(sample) for sample in x]
    outputs = [np.stack([s[i] for s in per_sample]) for i in range(len(model.output_names))]
    return _save(ctx, model.output_names, outputs)


def _save(ctx: StepContext, names: list[str], outputs: list[np.ndarray]) -> dict:
    # One .npy per output: byte-stable, unlike .npz, whose zip members carry the time.
    folder = ctx.output("outputs", "reference")
    folder.mkdir()
    for i, array in enumerate(outputs):
        np.save(folder / f"output_{i}.npy", array.astype(np.float32))
    return {"outputs": names, "shapes": [list(a.shape) for a in outputs],
            "samples": int(outputs[0].shape[0])}
