"""Task metrics for validation: output fidelity, classification accuracy, detection
mAP and agreement. numpy and pycocotools only, so a validate step never needs the
framework the model was trained in; pycocotools is imported inside the functions
that use it, to keep planning and no-op runs fast.

- `fidelity`: how close an artifact's raw outputs are to the source model's.
- `classification`: top-k accuracy against labels, top-1 agreement with the source.
- `decoders`: raw detector outputs -> boxes (built-in layouts and plug-ins).
- `detection`: COCO mAP (pycocotools) and box agreement with the source.
"""

# Task metrics, as fractions; the first is what accuracy drops are measured on.
TASK_METRICS = {"classification": ("top1", "top5"), "detection": ("map50", "map50_95")}
PRIMARY_METRIC = {task: metrics[0] for task, metrics in TASK_METRICS.items()}
METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "map50": "mAP@0.5",
                 "map50_95": "mAP@0.5:0.95"}
