"""Fidelity figures on hand-made outputs, where the right answer is known."""

from __future__ import annotations

import numpy as np

from edgebuild.metrics.fidelity import output_fidelity


def figures(reference, output) -> dict:
    ref, out = np.asarray(reference, np.float32), np.asarray(output, np.float32)
    return output_fidelity([ref], [out])[0]


def test_identical_outputs():
    result = figures([[1, 2, 3]], [[1, 2, 3]])
    assert result["cosine"] == 1.0 and result["snr_db"] is None and result["max_abs_diff"] == 0


def test_known_noise():
    result = figures([[3, 4]], [[3, 5]])  # signal 25, noise 1: SNR 10*log10(25) dB
    assert abs(result["snr_db"] - 10 * np.log10(25)) < 1e-9
    assert abs(result["cosine"] - (9 + 20) / (5 * np.sqrt(34))) < 1e-9
    assert result["max_abs_diff"] == 1


def test_a_dead_model_does_not_pass_for_perfect():
    """An artifact whose output collapsed to zeros must not score cosine 1."""
    assert figures([[0.2, 0.5, 0.3]], [[0, 0, 0]])["cosine"] == 0.0
    assert figures([[0, 0]], [[0, 0]])["cosine"] == 1.0
