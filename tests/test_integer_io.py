"""Integer model I/O: callers of the runtimes pass and get float32, and the LiteRT
wrapper quantizes inputs and dequantizes outputs with the model's own parameters."""

from __future__ import annotations

import numpy as np
import pytest

from edgebuild.toolchains.runtimes import LiteRTModel, _dequantize, _quantize


@pytest.mark.parametrize("dtype, zero", [(np.int8, -3), (np.uint8, 128)])
def test_quantize_round_trips_grid_values_and_clips_the_rest(dtype, zero):
    detail = {"dtype": dtype, "quantization": (0.25, zero)}
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype)
    grid = (q.astype(np.float32) - zero) * np.float32(0.25)  # every representable value
    assert np.array_equal(_quantize(grid, detail), q)
    assert _quantize(grid, detail).dtype == dtype
    assert np.array_equal(_dequantize(q, detail), grid)
    beyond = np.array([grid.min() - 100, grid.min() - 0.2, grid.max() + 0.2, 1e9], np.float32)
    assert _quantize(beyond, detail).tolist() == [info.min, info.min, info.max, info.max]
    # Less than half a step (0.1 of 0.25) off the grid rounds back onto it.
    assert np.array_equal(_quantize(grid + 0.1, detail), q)
    assert np.array_equal(_quantize(grid - 0.1, detail), q)


def test_float_models_pass_through():
    x = np.array([1.5, -2.0], np.float32)
    assert _quantize(x, {"dtype": np.float32}) is not x
    assert np.array_equal(_quantize(x, {"dtype": np.float32}), x)
    assert _dequantize(x, {"dtype": np.float32}) is x


def tiny_model():
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.layers.Input((8, 8, 3), name="image"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),  # linear: the output takes both signs
    ])


def full_integer(model, calibration: np.ndarray, io_type) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = io_type
    return converter.convert()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")  # integer I/O's usual
def test_int8_and_uint8_io_models_take_and_give_float(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
    samples = rng.uniform(0, 1, (8, 8, 8, 3)).astype(np.float32)
    model = tiny_model()
    expected = model.predict(samples, verbose=0)
    for io_type, dtype in ((tf.int8, np.int8), (tf.uint8, np.uint8)):
        path = tmp_path / f"{dtype.__name__}.tflite"
        path.write_bytes(full_integer(model, calibration, io_type))
        lite = LiteRTModel(path)
        assert lite.inputs[0]["dtype"] == dtype and lite.outputs[0]["dtype"] == dtype
        scale = lite.outputs[0]["quantization"][0]
        got = np.stack([lite(s)[0] for s in samples])
        assert got.dtype == np.float32 and got.shape == expected.shape
        # The output grid alone costs up to scale / 2; input, weight and activation
        # rounding inside this two-layer model add about as much again (measured: 1.3
        # steps). 3 steps leave margin, and still fail if the I/O (de)quantization used
        # a wrong scale or zero point (the output zero point here is 48 for int8, 176
        # for uint8: ignoring it is off by that many steps).
        assert np.max(np.abs(got - expected)) <= 3 * scale, (dtype, scale)
        assert np.ptp(expected) > 20 * scale  # the check above is not vacuous
