"""Raw-output fidelity: how far an artifact's outputs drift from the source model's.

Task-blind on purpose: it works for any model, and catches a broken conversion
before a task metric (which needs labels and a decoder) is even computed.
"""

from __future__ import annotations

import numpy as np

SNR_FLOOR_DB = -300.0  # stands for -inf dB (no signal at all): JSON has no infinity


def output_fidelity(reference: list[np.ndarray], outputs: list[np.ndarray]) -> list[dict]:
    """Per output index: cosine similarity, SNR in dB and max abs difference, taken
    over the whole batch. `outputs[i]` must already be paired with `reference[i]`."""
    if len(reference) != len(outputs):
        raise ValueError(f"{len(reference)} reference outputs but {len(outputs)} outputs")
    pairs = enumerate(zip(reference, outputs, strict=True))
    return [_compare(i, ref, out) for i, (ref, out) in pairs]


def _compare(index: int, ref: np.ndarray, out: np.ndarray) -> dict:
    # float64: float32 sums over large outputs lose the digits that SNR is about.
    a, b = np.asarray(ref, np.float64).ravel(), np.asarray(out, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"output {index}: {a.size} reference values but {b.size} values")
    return {
        "output": index,
        "cosine": _cosine(a, b),
        "snr_db": _snr_db(a, b),
        "max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms:
        return float(np.dot(a, b) / norms)
    # Two all-zero outputs agree; one all-zero output (a dead model) agrees with nothing.
    return float(not a.any() and not b.any())


def _snr_db(a: np.ndarray, b: np.ndarray) -> float | None:
    noise = np.sum((a - b) ** 2)
    if not noise:
        return None  # identical outputs: SNR is infinite, and JSON has no infinity
    signal = np.sum(a**2)
    if not signal:  # an all-zero reference: all noise, -inf dB, floored for JSON
        return SNR_FLOOR_DB
    return max(float(10 * np.log10(signal / noise)), SNR_FLOOR_DB)
