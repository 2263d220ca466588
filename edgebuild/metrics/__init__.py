"""Task metrics for validation: output fidelity, classification accuracy, detection
mAP and agreement. numpy and pycocotools only, so a validate step never needs the
framework the model was trained in; pycocotools is imported inside the functions
that use it, to keep planning and no-op runs fast.

- `fidelity`: how close an artifact's raw outputs are to the source model's.
- `classification`: top-k accuracy against labels, top-1 agreement with the source.
- `decoders`: raw detector outputs -> boxes (built-in layouts and plug-ins).
- `detection`: COCO mAP (pycocotools) and box agreement with the source.
"""
