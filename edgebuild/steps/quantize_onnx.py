"""quantize.onnx: post-training quantization with ONNX Runtime.

- dynamic: int8 or uint8 weights; activations quantized on the fly at run time.
- int8 (static QDQ): weights and activations, per tensor or per channel, with ranges
  calibrated on data.calibration by MinMax, Entropy or Percentile. For ONNX Runtime's
  CPU, hard-swish, hard-sigmoid and squeeze-excite are rewritten to run on its int8
  kernels too (toolchains/onnx_int8_activations). For TensorRT the quantization is
  symmetric int8 throughout, the only kind it executes, and biases stay float: its
  ONNX parser dequantizes int8, fp8 and int4 only, not int32.
- fp16: float16 weights and compute, with float32 or float16 inputs and outputs.

`keep_float` excludes node names or op types from any of them, e.g. a detector's head.
The library calls are in toolchains/ort_quantize.
"""

from __future__ import annotations

from edgebuild.errors import StepError
from edgebuild.worker import StepContext


def run(ctx: StepContext) -> dict:
    from edgebuild.toolchains import onnx_tools as tools
    from edgebuild.toolchains import ort_quantize

    ort_quantize.quiet()
    params = ctx.params
    mode = params["mode"]
    ctx.progress(f"quantizing to {mode} with ONNX Runtime")
    model = tools.load_checked(ctx.inputs["model"])
    tools.name_nodes(model)
    nodes = tools.matching_nodes(model, params["keep_float"]["layers"])
    ops = _existing_op_types(model, params["keep_float"]["ops"])
    out = ctx.output("model", "model.onnx")
    facts: dict = {}
    if mode == "fp16":
        ort_quantize.to_fp16(model, out, params["io"] == "float32", ops, nodes)
    elif mode == "dynamic":
        ort_quantize.dynamic(model, out, params["per_channel"],
                             params.get("weight_type") == "uint8", nodes, ops)
    else:
        options = ort_quantize.StaticOptions(
            per_channel=params["per_channel"], symmetric=params.get("symmetric", False),
            quantize_bias=params.get("quantize_bias", True),
            calibration_method=params.get("calibration_method") or "minmax")
        facts.update(ort_quantize.static(
            model, out, _calibration_samples(ctx, model), options, nodes, ops,
            ctx.outdir.parent, lambda done, total: ctx.progress("calibrating", done, total)))
    if nodes or ops:
        facts["kept_float"] = {"nodes": nodes, "op_types": ops}
    return {"facts": facts, "bytes": out.stat().st_size, "mode": mode}


def _calibration_samples(ctx: StepContext, model):
    from edgebuild.data import load_samples

    samples = load_samples(ctx.inputs["calibration"], ctx.params["calibration"])
    first = model.graph.input[0]
    expected = [d.dim_value for d in first.type.tensor_type.shape.dim]
    if list(samples.shape[1:]) != expected[1:]:
        raise StepError(f"calibration samples have shape {list(samples.shape[1:])} and the "
                        f"model's input '{first.name}' takes {expected[1:]}; check "
                        "data.preprocess (resize and layout)")
    return samples


def _existing_op_types(model, wanted: tuple[str, ...] | list[str]) -> list[str]:
    from edgebuild.toolchains.onnx_tools import op_types

    present = op_types(model)
    missing = [op for op in wanted if op not in present]
    if missing:
        raise StepError(f"quantize.keep_float.ops: the model has no {', '.join(missing)} node "
                        f"(its op types: {', '.join(sorted(present))})")
    return list(wanted)
