"""validate: measure an artifact against its float source and check the budget.

The artifact runs in its own runtime (LiteRT for .tflite, ONNX Runtime for .onnx) on
the validation set. Measured: task metrics and their drop against the baseline step's,
fidelity to the source outputs (SNR, cosine, top-1 or box agreement), and host
latency, interleaved with the float artifact's so both see the same machine state.

A missed budget is a result, not a crash: the verdict is cached like any output,
and the build decides what it means (fail the target, or step down a fallback
ladder). `verdict.json` holds only what is reproducible and goes into bundles;
`report.json` adds host timings, which never do.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from edgebuild.worker import StepContext

COUNTED_METRICS = ("top1", "top5")  # fractions of the samples: drops are whole samples


def run(ctx: StepContext) -> dict:
    from edgebuild import evaluation as ev
    from edgebuild.metrics.fidelity import output_fidelity
    from edgebuild.toolchains.runtimes import float_compute, load_runtime

    params, task = ctx.params, ctx.params["task"]
    truth = ev.load_validation_set(ctx.inputs, params)
    x = truth.x[:params.get("samples")]
    reference = [r[:len(x)] for r in _load_reference(ctx.inputs["reference"])]
    baseline = json.loads(ctx.inputs["baseline"].read_text())["metrics"]

    model = load_runtime(ctx.inputs["model"])
    feed = _in_layout(x, params.get("input_layout"))
    outputs, matches = _run_artifact(ctx, model, feed, reference)

    decode = ev.decoder(ctx.inputs, params)
    if len(x) < len(truth.x):  # `samples` limits the run; metrics cover what ran
        truth = ev.ValidationSet(x, None if truth.labels is None else truth.labels[:len(x)],
                                 truth.annotations,
                                 None if truth.image_ids is None else truth.image_ids[:len(x)])
        baseline = ev.task_metrics(task, truth, reference, decode, ev.class_names(ctx.inputs))
    metrics = ev.task_metrics(task, truth, outputs, decode, ev.class_names(ctx.inputs))
    fidelity = output_fidelity(reference, outputs)
    agreement = ev.agreement(task, reference, outputs, decode)

    ctx.progress("timing")
    float_model = load_runtime(ctx.inputs["float"]) if "float" in ctx.inputs else None
    latency, float_latency = _latency(model, float_model, feed[0], params["warmup"],
                                      params["runs"])
    speedup = (round(float_latency["median_ms"] / latency["median_ms"], 3)
               if float_latency else None)

    size = ctx.inputs["model"].stat().st_size
    verdict = _verdict(params, len(x), metrics, baseline, fidelity, agreement, size,
                       latency["median_ms"], speedup)
    verdict["outputs"] = [m.to_dict() for m in matches]
    report = {**verdict, "size_bytes": size, "fidelity": fidelity,
              "agreement": dict(zip(("label", "value"), agreement, strict=True))
              if agreement else None,
              "latency": latency, "float_latency": float_latency, "speedup": speedup,
              "slower": _slower(speedup, float_compute(ctx.inputs["model"]))
              if speedup is not None and speedup < 1 else None}
    ctx.output("verdict", "verdict.json").write_text(json.dumps(verdict, sort_keys=True))
    ctx.output("report", "report.json").write_text(json.dumps(report, sort_keys=True, indent=1))
    return {"verdict": {"passed": verdict["passed"], "misses": verdict["misses"]}}


def _run_artifact(ctx: StepContext, model, feed, reference: list[np.ndarray]):
    """The artifact's outputs on every sample, in the source's order and layout, and
    how they were matched to the source's (by name, or by shape)."""
    from edgebuild.evaluation import OUTPUT_NAMES
    from edgebuild.output_mapping import match_outputs

    per_sample = []
    for i, sample in enumerate(feed):
        per_sample.append(model(sample))
        ctx.progress("validating", i + 1, len(feed))
    got = [np.stack([o[i] for o in per_sample]) for i in range(len(model.output_names))]
    names = json.loads((ctx.inputs["reference"] / OUTPUT_NAMES).read_text())
    matches = match_outputs([(n, (1, *r.shape[1:])) for n, r in zip(names, reference, strict=True)],
                            [(n, (1, *g.shape[1:])) for n, g in zip(model.output_names, got,
                                                                   strict=True)])
    outputs = [got[m.index].transpose(m.transpose) if m.transpose else got[m.index]
               for m in matches]
    return outputs, matches


def _verdict(params: dict, samples: int, metrics, baseline, fidelity, agreement, size: int,
             latency_ms: float, speedup) -> dict:
    """The budget's judgement of what was measured, and the drops it was judged on."""
    from edgebuild import budget as budgets
    from edgebuild.metrics import METRIC_LABELS, PRIMARY_METRIC

    metric = params["budget"].get("metric") or PRIMARY_METRIC[params["task"]]
    counted = samples if metric in COUNTED_METRICS else None
    measured = budgets.Measured(
        metric=metric, metric_label=METRIC_LABELS[metric],
        value=metrics.get(metric) if metrics else None,
        baseline=baseline.get(metric) if baseline else None, samples=counted,
        fidelity=fidelity, agreement=agreement[1] if agreement else None,
        agreement_label=agreement[0] if agreement else "agreement",
        size_bytes=size, latency_ms=latency_ms, speedup=speedup)
    check = budgets.check(params["budget"], measured)
    drop = ({k: round(float(budgets.drop(v, baseline[k], samples if k in COUNTED_METRICS
                                          else None)), 6) for k, v in metrics.items()}
            if metrics and baseline else None)
    return {"passed": check.passed, "rung": params.get("rung"), "samples": samples,
            "metric": metric, "metrics": metrics, "baseline": baseline, "drop": drop,
            "misses": check.misses, "unchecked": check.unchecked}


def _slower(speedup: float, ops: dict | None) -> dict:
    """An artifact slower than its float artifact on this host, and what is visible of
    why: how many of its ops still compute in float."""
    slower = {"speedup": speedup, "note": "host latency, not device latency"}
    if ops:
        kinds = ", ".join(f"{n} {op}" for op, n in list(ops["float_op_types"].items())[:4])
        slower["ops"], slower["float_ops"] = ops["ops"], ops["float_ops"]
        slower["why"] = (f"{ops['float_ops']} of {ops['ops']} ops compute in float"
                         + (f" ({kinds})" if kinds else ""))
    return slower


def _load_reference(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("output_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
    return [np.load(f) for f in files]


def _in_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
    """Samples (in the source model's layout) as the artifact takes them: onnx2tf's
    artifacts of an NCHW model take NHWC."""
    if layout == "NHWC" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def _latency(model, float_model, sample: np.ndarray, warmup: int,
             runs: int) -> tuple[dict, dict | None]:
    """Median and p90 of `runs` timed calls after `warmup`, one thread. With a float
    model, calls alternate between the two, so both see the same machine state."""
    candidates = [model] if float_model is None else [model, float_model]
    for _ in range(warmup):
        for m in candidates:
            m(sample)
    times: list[list[float]] = [[] for _ in candidates]
    for _ in range(runs):
        for m, record in zip(candidates, times, strict=True):
            start = time.perf_counter()
            m(sample)
            record.append((time.perf_counter() - start) * 1000)
    stats = [_stats(t) for t in times]
    return stats[0], (stats[1] if float_model is not None else None)


def _stats(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 4),
            "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 4),
            "runs": len(times), "threads": 1, "host_cpu": _host_cpu(),
            "note": "host latency, not device latency"}


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or f"{os.cpu_count()} CPUs"
