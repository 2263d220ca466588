"""validate (first cut): run the artifact in its own runtime on the validation set and
compare it with the source model's outputs.

Two outputs: `verdict.json` holds only what is reproducible (pass/fail, sample
count, data digest) and goes into the bundle manifest; `report.json` adds host
timings, which never go into bundles.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edgebuild.errors import StepError
from edgebuild.worker import StepContext


def run(ctx: StepContext) -> dict:
    """The runtime follows the artifact: LiteRT for .tflite, ONNX Runtime for .onnx."""
    from edgebuild.data import load_samples
    from edgebuild.toolchains.runtimes import load_runtime

    params = ctx.params
    reference = _load_reference(ctx.inputs["reference"])
    x = load_samples(ctx.inputs["data"], params["data"])[:params.get("samples")]
    model = load_runtime(ctx.inputs["model"])
    ctx.progress(f"running {len(x)} samples")
    outputs = [model(sample) for sample in x]
    got = [np.stack([o[i] for o in outputs]) for i in range(len(model.output_names))]
    fidelity = _fidelity(_pair(reference, got, len(x)))
    latency = _latency(model, x[0], params["warmup"], params["runs"])
    size = ctx.inputs["model"].stat().st_size
    report = {"samples": len(x), "size_bytes": size, "fidelity": fidelity, "latency": latency}
    if "float" in ctx.inputs:
        float_latency = _latency(load_runtime(ctx.inputs["float"]), x[0], params["warmup"],
                                 params["runs"])
        report["float_latency"] = float_latency
        report["speedup"] = round(float_latency["median_ms"] / latency["median_ms"], 3)
    misses = _budget_misses(params["budget"], size, fidelity)
    verdict = {"passed": not misses, "samples": len(x), "misses": misses}
    ctx.output("verdict", "verdict.json").write_text(json.dumps(verdict, sort_keys=True))
    ctx.output("report", "report.json").write_text(json.dumps(report, sort_keys=True, indent=1))
    if misses:
        raise StepError("budget missed: " + "; ".join(misses))
    return report


def _load_reference(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("output_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    return [np.load(f) for f in files]


def _pair(reference: list[np.ndarray], got: list[np.ndarray], n: int):
    """Match artifact outputs to source outputs: by shape where that is unambiguous,
    otherwise in order (converters may reorder outputs, never reshape them)."""
    remaining = list(range(len(got)))
    pairs = []
    for i, ref in enumerate(reference):
        ref = ref[:n]
        same_shape = [j for j in remaining if got[j].shape == ref.shape]
        if not same_shape:
            raise StepError(f"source output {i} has shape {ref.shape[1:]}, and no artifact "
                            f"output matches (artifact: {[g.shape[1:] for g in got]})")
        j = same_shape[0]
        remaining.remove(j)
        pairs.append((i, ref, got[j]))
    return pairs


def _fidelity(pairs) -> list[dict]:
    results = []
    for index, ref, out in pairs:
        a, b = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
        noise = np.sum((a - b) ** 2)
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        # Two all-zero outputs agree; one all-zero output (a dead model) agrees with nothing.
        cosine = float(np.dot(a, b) / norms) if norms else float(not a.any() and not b.any())
        results.append({
            "output": index,
            "max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0,
            "cosine": cosine,
            # None: identical outputs, where SNR is infinite (and JSON has no infinity).
            "snr_db": float(10 * np.log10(np.sum(a ** 2) / noise)) if noise else None,
        })
    return results


def _latency(model, sample: np.ndarray, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        model(sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(sample)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 4),
            "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 4),
            "runs": runs, "threads": 1, "host_cpu": _host_cpu(),
            "note": "host latency, not device latency"}


def _budget_misses(budget: dict, size: int, fidelity: list[dict]) -> list[str]:
    misses = []
    if budget.get("max_size_mb") is not None and size > budget["max_size_mb"] * 1e6:
        misses.append(f"size {size / 1e6:.3f} MB > max_size_mb {budget['max_size_mb']}")
    if budget.get("min_cosine") is not None:
        for f in fidelity:
            if f["cosine"] < budget["min_cosine"]:
                misses.append(f"output {f['output']} cosine {f['cosine']:.4f} < min_cosine "
                              f"{budget['min_cosine']}")
    return misses


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or f"{os.cpu_count()} CPUs"
