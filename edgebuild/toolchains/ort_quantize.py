"""ONNX Runtime's post-training quantization (`onnxruntime.quantization`) behind a
small adapter: fp16, dynamic int8 and static QDQ int8 with MinMax, Percentile or
(TensorRT-style) Entropy calibration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass(frozen=True)
class StaticOptions:
    """How to quantize statically: for ONNX Runtime's CPU (asymmetric uint8
    activations, 7-bit int8 weights) or for TensorRT (symmetric int8, float biases)."""

    per_channel: bool
    symmetric: bool = False
    quantize_bias: bool = True
    calibration_method: str = "minmax"


def quiet() -> None:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def to_fp16(model, out: Path, keep_io_types: bool, ops: list[str], nodes: list[str]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=keep_io_types,
                                    op_block_list=ops or None, node_block_list=nodes or None)
    onnx.save(half, str(out))


def dynamic(model, out: Path, per_channel: bool, uint8_weights: bool, nodes: list[str],
            ops: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    weights = QuantType.QUInt8 if uint8_weights else QuantType.QInt8
    quantize_dynamic(model, str(out), per_channel=per_channel, weight_type=weights,
                     nodes_to_exclude=nodes or None,
                     op_types_to_quantize=_quantized_ops(IntegerOpsRegistry, ops))


def static(model, out: Path, samples: np.ndarray, options: StaticOptions, nodes: list[str],
           ops: list[str], workdir: Path, progress: Callable[[int, int], None]) -> dict:
    """Static QDQ int8 calibrated on `samples`; what was rewritten or kept float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    from edgebuild.toolchains import onnx_int8_activations as activations
    from edgebuild.toolchains import onnx_tools as tools

    reader = _reader(model.graph.input[0].name, samples, progress)
    # ONNX Runtime's CPU kernels are fastest with uint8 activations and int8 weights
    # (U8S8); TensorRT runs only symmetric int8. On x86 CPUs without VNNI, U8S8 sums
    # pairs of products in 16 bits (VPMADDUBSW), which saturates with full-range
    # weights: the detector lost 12 mAP points on such a CPU. 7-bit weights
    # (reduce_range) cannot saturate, so the artifact is right on every x86 CPU.
    symmetric = options.symmetric
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    if not options.quantize_bias:  # TensorRT's parser dequantizes int8, not int32
        extra["QuantizeBias"] = False
    method = CALIBRATION_METHODS[options.calibration_method or "minmax"]
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
        ranges = _entropy_ranges(model, op_types or list(QDQRegistry), reader(), workdir)
    quantize_static(
        model, str(out), None if ranges else reader(), quant_format=QuantFormat.QDQ,
        per_channel=options.per_channel,
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


def _reader(input_name: str, samples: np.ndarray, progress: Callable[[int, int], None]):
    """A factory of CalibrationDataReaders over `samples`, one sample a batch."""
    from onnxruntime.quantization import CalibrationDataReader

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index == len(samples):
                return None
            self.index += 1
            progress(self.index, len(samples))
            return {input_name: samples[self.index - 1][None, ...]}

    return Samples


def _entropy_ranges(model, op_types: list[str], reader, workdir: Path) -> Path:
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

    work = workdir / "entropy"
    work.mkdir()
    onnx.save(model, str(work / "model.onnx"))
    calibrator = create_calibrator(
        work / "model.onnx", op_types, augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    ranges = workdir / "entropy.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


def _quantized_ops(registry: dict, excluded: list[str]) -> list[str] | None:
    """What ONNX Runtime quantizes by default, less the op types kept in float."""
    return [op for op in registry if op not in excluded] if excluded else None
