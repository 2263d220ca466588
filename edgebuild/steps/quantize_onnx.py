"""quantize.onnx: post-training quantization with ONNX Runtime (`onnxruntime.quantization`).

- dynamic: int8 or uint8 weights; activations quantized on the fly at run time.
- int8 (static QDQ): weights and activations, per tensor or per channel, with ranges
  calibrated on data.calibration by MinMax, Entropy or Percentile. For ONNX Runtime's
  CPU, hard-swish, hard-sigmoid and squeeze-excite are rewritten to run on its int8
  kernels too (toolchains/onnx_int8_activations). For TensorRT the quantization is
  symmetric int8 throughout, the only kind it executes, and biases stay float: its
  ONNX parser dequantizes int8, fp8 and int4 only, not int32.
- fp16: float16 weights and compute, with float32 or float16 inputs and outputs.

`keep_float` excludes node names or op types from any of them, e.g. a detector's head.
"""

from __future__ import annotations

from edgebuild.errors import StepError
from edgebuild.worker import StepContext

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def run(ctx: StepContext) -> dict:
    import onnx
    import onnxruntime

    from edgebuild.toolchains import onnx_tools as tools

    onnxruntime.set_default_logger_severity(3)
    params = ctx.params
    mode = params["mode"]
    ctx.progress(f"quantizing to {mode} with ONNX Runtime")
    model = tools.load_checked(ctx.inputs["model"])
    tools.name_nodes(model)
    excluded_nodes = tools.matching_nodes(model, params["keep_float"]["layers"])
    excluded_ops = _existing_op_types(model, params["keep_float"]["ops"])
    out = ctx.output("model", "model.onnx")
    facts: dict = {}
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(
            model, keep_io_types=params["io"] == "float32",
            op_block_list=excluded_ops or None, node_block_list=excluded_nodes or None)
        onnx.save(half, str(out))
    elif mode == "dynamic":
        _dynamic(model, out, params, excluded_nodes, excluded_ops)
    else:
        facts.update(_static(ctx, model, out, params, excluded_nodes, excluded_ops))
    if excluded_nodes or excluded_ops:
        facts["kept_float"] = {"nodes": excluded_nodes, "op_types": excluded_ops}
    return {"facts": facts, "bytes": out.stat().st_size, "mode": mode}


def _dynamic(model, out, params: dict, nodes: list[str], ops: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    weights = QuantType.QUInt8 if params.get("weight_type") == "uint8" else QuantType.QInt8
    quantize_dynamic(model, str(out), per_channel=params["per_channel"], weight_type=weights,
                     nodes_to_exclude=nodes or None,
                     op_types_to_quantize=_quantized_ops(IntegerOpsRegistry, ops))


def _static(ctx: StepContext, model, out, params: dict, nodes: list[str],
            ops: list[str]) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry

    from edgebuild.data import load_samples
    from edgebuild.toolchains import onnx_int8_activations as activations
    from edgebuild.toolchains import onnx_tools as tools

    samples = load_samples(ctx.inputs["calibration"], params["calibration"])
    input_name = model.graph.input[0].name
    expected = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    if list(samples.shape[1:]) != expected[1:]:
        raise StepError(f"calibration samples have shape {list(samples.shape[1:])} and the "
                        f"model's input '{input_name}' takes {expected[1:]}; check "
                        "data.preprocess (resize and layout)")

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index == len(samples):
                return None
            self.index += 1
            ctx.progress("calibrating", self.index, len(samples))
            return {input_name: samples[self.index - 1][None, ...]}

    # ONNX Runtime's CPU kernels are fastest with uint8 activations and int8 weights
    # (U8S8); TensorRT runs only symmetric int8. On x86 CPUs without VNNI, U8S8 sums
    # pairs of products in 16 bits (VPMADDUBSW), which saturates with full-range
    # weights: the detector lost 12 mAP points on such a CPU. 7-bit weights
    # (reduce_range) cannot saturate, so the artifact is right on every x86 CPU.
    symmetric = params.get("symmetric", False)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    if not params.get("quantize_bias", True):  # TensorRT: float biases (chain.py)
        extra["QuantizeBias"] = False
    method = CALIBRATION_METHODS[params.get("calibration_method") or "minmax"]
    # For ONNX Runtime's CPU, hard-swish, hard-sigmoid and squeeze-excite run on int8
    # too (see onnx_int8_activations), and keeping some op types float no longer
    # drops Add, Mul, GlobalAveragePool and Concat with them; what reads only the kept
    # ops' float results stays float. TensorRT fuses on its own.
    rewrites = {} if symmetric else activations.prepare(model, nodes, ops)
    op_types = (_quantized_ops(QDQRegistry, ops) if symmetric
                else activations.quantized_op_types(ops))
    downstream = [] if symmetric else tools.float_successors(model, nodes, ops)
    ranges = None
    if method == "Entropy":
        ranges = _entropy_ranges(ctx, model, op_types or list(QDQRegistry), Samples())
    quantize_static(
        model, str(out), None if ranges else Samples(), quant_format=QuantFormat.QDQ,
        per_channel=params["per_channel"],
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=[*nodes, *downstream] or None,
        op_types_to_quantize=op_types, reduce_range=not symmetric,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options=extra or None, calibration_cache_path=ranges)
    if not symmetric:
        rewrites.update(activations.finish(out, nodes, ops))
    facts = {"calibration_samples": len(samples)}
    if downstream:
        facts["float_after_kept"] = len(downstream)
    return {**facts, "int8_activations": rewrites} if rewrites else facts


def _entropy_ranges(ctx: StepContext, model, op_types: list[str], reader):
    """Activation ranges by KL divergence over a 2048-bin histogram, as TensorRT's
    entropy calibrator does. quantize_static's own Entropy uses 128 histogram bins for
    128 quantized bins, which leaves nothing to search: it returns the min/max range.
    The ranges go to quantize_static as its calibration cache."""
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    work = ctx.outdir.parent / "entropy"
    work.mkdir()
    onnx.save(model, str(work / "model.onnx"))
    calibrator = create_calibrator(
        work / "model.onnx", op_types, augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    ranges = ctx.outdir.parent / "entropy.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


def _existing_op_types(model, wanted: tuple[str, ...] | list[str]) -> list[str]:
    from edgebuild.toolchains.onnx_tools import op_types

    present = op_types(model)
    missing = [op for op in wanted if op not in present]
    if missing:
        raise StepError(f"quantize.keep_float.ops: the model has no {', '.join(missing)} node "
                        f"(its op types: {', '.join(sorted(present))})")
    return list(wanted)


def _quantized_ops(registry: dict, excluded: list[str]) -> list[str] | None:
    """What ONNX Runtime quantizes by default, less the op types kept in float."""
    return [op for op in registry if op not in excluded] if excluded else None
