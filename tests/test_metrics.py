"""Task metrics on hand-made inputs whose answers are worked out by hand, decoders on
constructed tensors, and the box-scores decoder on the real UltraFace face detector."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from edgebuild.data import load_detection_set
from edgebuild.errors import StepError
from edgebuild.metrics.classification import top1_agreement, topk_accuracy
from edgebuild.metrics.decoders import Detections, load_decoder
from edgebuild.metrics.detection import (
    box_agreement,
    category_mapping,
    coco_map,
    load_annotations,
)
from edgebuild.metrics.fidelity import SNR_FLOOR_DB, output_fidelity

pytestmark = pytest.mark.fast

ULTRAFACE = SHARED / "models" / "ultraface"
PLAIN = {"mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1.0}


# -- fidelity and classification ------------------------------------------------------


def test_fidelity_of_identical_shifted_and_dead_outputs():
    ref = [np.array([[3.0, 4.0]]), np.zeros((1, 2)), np.zeros((1, 2))]
    out = [np.array([[3.0, 4.5]]), np.zeros((1, 2)), np.array([[1.0, 0.0]])]
    shifted, both_zero, dead = output_fidelity(ref, out)
    # Signal 3^2 + 4^2 = 25, noise 0.5^2 = 0.25: 10 log10(100) = 20 dB.
    assert shifted["snr_db"] == pytest.approx(20.0)
    assert shifted["max_abs_diff"] == pytest.approx(0.5)
    assert shifted["cosine"] == pytest.approx((9 + 18) / (5 * math.hypot(3, 4.5)))
    assert both_zero == {"output": 1, "cosine": 1.0, "snr_db": None, "max_abs_diff": 0.0}
    assert dead["cosine"] == 0.0 and dead["output"] == 2
    assert dead["snr_db"] == SNR_FLOOR_DB  # no signal, all noise: -inf, floored for JSON
    assert output_fidelity([ref[0]], [ref[0].copy()])[0]["snr_db"] is None


LOGITS = np.array([
    # label 2: top-1 hit
    [0.1, 0.2, 0.9, 0.0, 0.3, 0.4],
    # label 0: ranked 2nd -> top-5 hit only
    [0.5, 0.9, 0.1, 0.0, 0.2, 0.3],
    # label 3: ranked last (6th) -> miss in both
    [0.6, 0.5, 0.4, 0.0, 0.2, 0.3],
    # label 5: ranked 5th -> top-5 hit only
    [0.9, 0.8, 0.7, 0.6, 0.1, 0.5],
])
LABELS = np.array([2, 0, 3, 5])


def test_topk_accuracy_on_a_hand_made_matrix():
    assert topk_accuracy(LOGITS, LABELS) == {"top1": 0.25, "top5": 0.75}
    # (N, 1, C) outputs are flattened to (N, C); fewer than 5 classes: no top5.
    assert topk_accuracy(LOGITS[:, None, :], LABELS) == {"top1": 0.25, "top5": 0.75}
    # Argmaxes of the first four columns: 2, 1, 0, 0; the last label (3) misses.
    assert topk_accuracy(LOGITS[:, :4], np.array([2, 1, 0, 3])) == {"top1": 0.75}


def test_topk_accuracy_rejects_labels_out_of_range():
    with pytest.raises(StepError, match="label 6 is out of range: the model has 6 classes"):
        topk_accuracy(LOGITS, np.array([2, 0, 3, 6]))


def test_top1_agreement_counts_matching_argmaxes():
    other = LOGITS.copy()
    other[0] = [1, 0, 0, 0, 0, 0]  # argmax 2 -> 0: disagrees
    other[1] *= 2  # same ranking: agrees
    assert top1_agreement(LOGITS, other) == 0.75
    assert top1_agreement(LOGITS[:, None], LOGITS[:, None]) == 1.0


# -- COCO mAP ---------------------------------------------------------------------------

W, H = 200, 100  # not square, so a box scaled by the wrong side would miss


def annotations(boxes: dict[int, list[tuple[int, list[float]]]]) -> dict:
    """COCO dict: image id -> [(category id, [x, y, w, h] pixels)]. No area, iscrowd or
    annotation id, as minimal exports leave them out."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in boxes],
        "annotations": [{"image_id": i, "category_id": c, "bbox": b}
                        for i, objects in boxes.items() for c, b in objects],
        "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
    }


def found(*objects: tuple[int, list[float], float]) -> Detections:
    """Detections from (class, [x, y, w, h] pixels, score)."""
    boxes = [[x / W, y / H, (x + w) / W, (y + h) / H] for _, (x, y, w, h), _ in objects]
    return Detections(np.array(boxes, np.float32).reshape(-1, 4),
                      np.array([s for *_, s in objects], np.float32),
                      np.array([c for c, *_ in objects], np.int64))


CLASSES = [3, 7]  # model class 0 -> circle (3), 1 -> square (7)


def test_perfect_detections_score_one():
    truth = annotations({1: [(3, [10, 10, 40, 20]), (7, [100, 50, 60, 40])],
                         2: [(7, [0, 0, 200, 100])]})
    detections = [found((0, [10, 10, 40, 20], 0.9), (1, [100, 50, 60, 40], 0.8)),
                  found((1, [0, 0, 200, 100], 0.7))]
    result = coco_map(detections, truth, [1, 2], CLASSES)
    assert result == pytest.approx({"map50": 1.0, "map50_95": 1.0})


def test_iou_of_062_counts_at_three_of_ten_thresholds():
    # Ground truth 50x50 = 2500 px; the detection is its top 50x31 = 1550 px, so
    # IoU = 1550 / 2500 = 0.62: a match at IoU thresholds 0.50, 0.55, 0.60 (AP 1 each),
    # a miss at 0.65 ... 0.95 (AP 0): mAP@0.5:0.95 = 3 / 10.
    truth = annotations({1: [(3, [20, 20, 50, 50])]})
    result = coco_map([found((0, [20, 20, 50, 31], 0.9))], truth, [1], CLASSES)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map50_95"] == pytest.approx(0.3)


def test_a_higher_scored_false_positive_lowers_ap():
    # Two ground truths; detections by score: hit (0.9), false positive (0.8), hit (0.7).
    # Recall/precision after each: (0.5, 1), (0.5, 1/2), (1, 2/3); interpolated
    # precision is 1 up to recall 0.5 and 2/3 above. COCO samples recall at 0, 0.01, ...,
    # 1: 51 points (0 ... 0.50) at 1, 50 points (0.51 ... 1) at 2/3, so
    # AP = (51 + 50 * 2/3) / 101 = 0.83498..., at every IoU threshold (hits are exact).
    truth = annotations({1: [(3, [10, 10, 30, 30]), (3, [120, 50, 30, 30])]})
    detections = [found((0, [10, 10, 30, 30], 0.9), (0, [60, 10, 20, 20], 0.8),
                        (0, [120, 50, 30, 30], 0.7))]
    expected = (51 + 50 * 2 / 3) / 101
    result = coco_map(detections, truth, [1], CLASSES)
    assert result == pytest.approx({"map50": expected, "map50_95": expected})


def test_no_detections_score_zero_and_only_listed_images_count():
    truth = annotations({1: [(3, [10, 10, 30, 30])], 2: [(7, [10, 10, 30, 30])]})
    assert coco_map([Detections.empty()] * 2, truth, [1, 2], CLASSES) == {
        "map50": 0.0, "map50_95": 0.0}
    # Image 2's square is not evaluated, so missing it costs nothing.
    assert coco_map([found((0, [10, 10, 30, 30], 0.9))], truth, [1], CLASSES) == pytest.approx(
        {"map50": 1.0, "map50_95": 1.0})


def test_coco_map_errors_without_ground_truth_or_with_unmapped_classes():
    truth = annotations({1: [], 2: [(3, [10, 10, 30, 30])]})
    with pytest.raises(StepError, match="1 validation images have no annotated boxes"):
        coco_map([found((0, [10, 10, 30, 30], 0.9))], truth, [1], CLASSES)
    with pytest.raises(StepError, match="predicts class 2, but the labels map only 2"):
        coco_map([found((2, [10, 10, 30, 30], 0.9))], truth, [2], CLASSES)


def test_category_mapping_by_name_or_by_id():
    truth = annotations({})
    assert category_mapping(truth, None) == [3, 7]
    assert category_mapping(truth, ["square", "circle"]) == [7, 3]
    with pytest.raises(StepError, match=r"labels \['hexagon'\] are not categories .*"
                                        r"\['circle', 'square'\]"):
        category_mapping(truth, ["square", "hexagon"])


def test_load_annotations_reports_what_is_wrong(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(annotations({1: [(3, [1, 2, 3, 4])]})))
    assert load_annotations(good)["annotations"][0]["bbox"] == [1, 2, 3, 4]
    cases = {
        "{not json": "are not valid JSON",
        "[]": "must be a COCO object",
        json.dumps({"images": [], "annotations": []}): "lacks 'categories'",
        json.dumps({**annotations({}), "images": [{"id": 1, "file_name": "a.png",
                                                   "height": 5}]}): r"images\[0\] lacks 'width'",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(StepError, match=f"bad.json: .*{message}"):
            load_annotations(bad)
    with pytest.raises(StepError, match="missing.json: cannot read the annotations"):
        load_annotations(tmp_path / "missing.json")


# -- box agreement ----------------------------------------------------------------------


def dets(*objects: tuple[int, list[float], float]) -> Detections:
    """Detections from (class, normalized [x1, y1, x2, y2], score)."""
    return Detections(np.array([b for _, b, _ in objects], np.float32).reshape(-1, 4),
                      np.array([s for *_, s in objects], np.float32),
                      np.array([c for c, *_ in objects], np.int64))


def test_box_agreement():
    a, b = [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]
    near_a = [0.1, 0.1, 0.5, 0.45]  # IoU 0.875
    reference = [dets((0, a, 0.9), (1, b, 0.8), (0, b, 0.3))]  # the 0.3 one is not counted
    assert box_agreement(reference, reference) == 1.0
    # Class of b changed: half agree. Low-scored copies do not count as matches.
    assert box_agreement(reference, [dets((0, near_a, 0.9), (0, b, 0.8))]) == 0.5
    assert box_agreement(reference, [dets((0, a, 0.4), (1, b, 0.4))]) == 0.0
    # One output box cannot match two reference boxes.
    twins = [dets((0, a, 0.9), (0, near_a, 0.8))]
    assert box_agreement(twins, [dets((0, a, 0.9))]) == 0.5
    # IoU 0.5 exactly (binary fractions, no rounding) is not "> 0.5".
    square, half = [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25]
    assert box_agreement([dets((0, square, 0.9))], [dets((0, half, 0.9))]) == 0.0
    assert box_agreement([dets((0, square, 0.9))], [dets((0, half, 0.9))],
                         iou_threshold=0.49) == 1.0
    assert box_agreement([dets((0, a, 0.4))], [dets((0, a, 0.9))]) is None
    assert box_agreement([Detections.empty()], [Detections.empty()]) is None


# -- decoders -----------------------------------------------------------------------------


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_grid_decoder_recovers_a_known_box_and_suppresses_its_neighbour():
    grid = np.full((2, 4, 4, 8), -20.0, np.float32)  # sample 1: nothing at all
    # Cell row 1, col 2, offsets sigmoid(0) = 0.5: centre ((2 + 0.5) / 4, (1 + 0.5) / 4);
    # width 0.5 and height 0.25 of the image; class 1 by far.
    grid[0, 1, 2, :8] = [10, 0, 0, 0, logit(0.25), 0, 8, 0]
    # Its neighbour sees almost the same object less surely: IoU 0.6, suppressed.
    grid[0, 1, 1, :8] = [5, 20, 0, 0, logit(0.25), 0, 8, 0]
    # A class-0 object at the same place survives: NMS is per class.
    grid[0, 1, 0, :8] = [5, 20, 0, 0, logit(0.25), 8, 0, 0]
    result = load_decoder({"name": "grid"})([grid])
    assert len(result) == 2 and len(result[1]) == 0
    first = result[0]
    assert first.classes.tolist() == [1, 0]
    np.testing.assert_allclose(first.boxes[0], [0.375, 0.25, 0.875, 0.5], atol=1e-6)
    class_prob = math.exp(8) / (math.exp(8) + 2)
    assert first.scores[0] == pytest.approx(1 / (1 + math.exp(-10)) * class_prob)
    assert first.boxes.dtype == np.float32 and first.classes.dtype == np.int64
    assert len(load_decoder({"name": "grid", "max_detections": 1})([grid])[0]) == 1
    assert len(load_decoder({"name": "grid", "iou_threshold": 0.7})([grid])[0]) == 3


CORNERS = np.array([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.4, 0.9], [0.6, 0.1, 0.9, 0.4]])
SCORES = np.array([
    [0.1, 0.9, 0.0],  # class 1 (0 after the background column is dropped)
    [0.8, 0.1, 0.1],  # mostly background
    [0.2, 0.0, 0.8],  # class 2 (1 after the drop)
])


@pytest.mark.parametrize("box_format, boxes", [
    ("xyxy", CORNERS),
    ("yxyx", CORNERS[:, [1, 0, 3, 2]]),
    ("cxcywh", np.concatenate([(CORNERS[:, :2] + CORNERS[:, 2:]) / 2,
                               CORNERS[:, 2:] - CORNERS[:, :2]], axis=1)),
])
def test_boxes_scores_decoder_reads_every_box_format(box_format, boxes):
    decode = load_decoder({"name": "boxes-scores", "box_format": box_format,
                           "background": 0, "score_threshold": 0.3})
    # Outputs in either order: the decoder finds boxes and scores by shape.
    for outputs in ([SCORES[None], boxes[None]], [boxes[None], SCORES[None]]):
        (result,) = decode([o.astype(np.float32) for o in outputs])
        assert result.classes.tolist() == [0, 1]
        assert result.scores.tolist() == pytest.approx([0.9, 0.8])
        np.testing.assert_allclose(result.boxes, CORNERS[[0, 2]], atol=1e-6)


def test_boxes_scores_background_and_activations():
    boxes = CORNERS[None].astype(np.float32)
    keep_all = load_decoder({"name": "boxes-scores", "score_threshold": 0.3})
    (result,) = keep_all([SCORES[None], boxes])
    # Without `background`, column 0 is a class like any other.
    assert result.classes.tolist() == [1, 0, 2]  # best first; ties keep prior order
    assert result.scores.tolist() == pytest.approx([0.9, 0.8, 0.8])
    for activation, raw in (("softmax", np.log(SCORES + 1e-9)), ("sigmoid", np.vectorize(
            lambda p: logit(min(max(p, 1e-6), 1 - 1e-6)))(SCORES))):
        decode = load_decoder({"name": "boxes-scores", "activation": activation,
                               "background": 0, "score_threshold": 0.3})
        (result,) = decode([raw[None].astype(np.float32), boxes])
        assert result.classes.tolist() == [0, 1], activation
        assert result.scores.tolist() == pytest.approx([0.9, 0.8], abs=1e-5)


def test_decoder_option_and_layout_errors():
    with pytest.raises(StepError, match="decode.box_format: the grid decoder has no option"):
        load_decoder({"name": "grid", "box_format": "xyxy"})
    with pytest.raises(StepError, match="decode.box_format: 'xywh' is not one of xyxy, yxyx"):
        load_decoder({"name": "boxes-scores", "box_format": "xywh"})
    with pytest.raises(StepError, match="decode.max_detections: 0 is not a positive"):
        load_decoder({"name": "boxes-scores", "max_detections": 0})
    with pytest.raises(StepError, match="'yolo' is not a built-in decoder .*grid, boxes-scores"
                                        ".*package.module:function"):
        load_decoder({"name": "yolo"})
    with pytest.raises(StepError, match="decode.background: column 3 does not exist"):
        load_decoder({"name": "boxes-scores", "background": 3})([SCORES[None],
                                                                 CORNERS[None]])
    four_classes = np.zeros((1, 3, 4), np.float32)  # boxes or scores? Cannot tell.
    with pytest.raises(StepError, match=r"exactly one \(N, K, 4\) box output"):
        load_decoder({"name": "boxes-scores"})([four_classes, CORNERS[None]])


PLUGIN = """\
import numpy as np

from edgebuild.metrics.decoders import Detections


def decode(outputs, threshold=0.5):
    (grid,) = outputs
    result = []
    for sample in grid:
        keep = sample[:, 4] >= threshold
        boxes = sample[keep, :4]
        if len(result) % 2:  # dicts work as well as Detections
            result.append({"boxes": boxes, "scores": sample[keep, 4], "classes": [1] * len(boxes)})
        else:
            result.append(Detections(boxes, sample[keep, 4], np.zeros(len(boxes), np.int64)))
    return result


def pixels(outputs):
    return [{"boxes": [[10, 10, 64, 64]], "scores": [0.9], "classes": [0]}] * len(outputs[0])


def short(outputs):
    return [{"boxes": [[0.1, 0.1, 0.2, 0.2]], "scores": [0.9, 0.8], "classes": [0]}]


def missing_key(outputs):
    return [{"boxes": [], "scores": []}]


def named_classes(outputs):
    return [{"boxes": [[0.1, 0.1, 0.2, 0.2]], "scores": [0.9], "classes": ["face"]}]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    (tmp_path / "shapes_plugin.py").write_text(PLUGIN)
    (tmp_path / "needy_plugin.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "shapes_plugin"


def test_plugin_decoder_from_the_recipe_folder(plugin):
    rows = np.array([[[0.1, 0.1, 0.3, 0.3, 0.9], [0.5, 0.5, 0.7, 0.7, 0.2]]] * 2, np.float32)
    decode = load_decoder({"name": f"{plugin}:decode", "threshold": 0.1})
    first, second = decode([rows])
    assert len(first) == 2 and first.classes.tolist() == [0, 0]
    assert second.classes.tolist() == [1, 1] and second.classes.dtype == np.int64
    np.testing.assert_allclose(second.boxes, rows[1, :, :4])
    assert len(load_decoder({"name": f"{plugin}:decode"})([rows])[0]) == 1


def test_plugin_errors_say_what_is_wrong(plugin):
    rows = np.zeros((1, 2, 5), np.float32)
    with pytest.raises(StepError, match="plug-in module 'no_such_module' is not found; put "
                                        "no_such_module.py next to the recipe"):
        load_decoder({"name": "no_such_module:decode"})
    with pytest.raises(StepError, match="'needy_plugin' cannot import "
                                        "'not_installed_dependency', which it needs"):
        load_decoder({"name": "needy_plugin:decode"})
    with pytest.raises(StepError, match="shapes_plugin.py has no function 'nothing'"):
        load_decoder({"name": f"{plugin}:nothing"})
    with pytest.raises(StepError, match=r"does not take the options \['iou'\]"):
        load_decoder({"name": f"{plugin}:decode", "iou": 0.5})
    with pytest.raises(StepError, match="sample 0: box coordinates reach 10..64; they must "
                                        r"be normalized to \[0, 1\]"):
        load_decoder({"name": f"{plugin}:pixels"})([rows])
    with pytest.raises(StepError, match="sample 0: 1 boxes, 2 scores and 1 classes"):
        load_decoder({"name": f"{plugin}:short"})([rows])
    with pytest.raises(StepError, match="sample 0: the dict lacks classes"):
        load_decoder({"name": f"{plugin}:missing_key"})([rows])
    with pytest.raises(StepError, match="sample 0: classes are not a numeric array"):
        load_decoder({"name": f"{plugin}:named_classes"})([rows])
    with pytest.raises(StepError, match="returned a list of 1; .* 2 for this batch"):
        load_decoder({"name": f"{plugin}:short"})([np.zeros((2, 2, 5))])


# -- detection data -----------------------------------------------------------------------


def write_coco_images(folder: Path, names_and_values: dict[str, int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, value in names_and_values.items():
        Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(folder / name)


def test_load_detection_set_orders_by_file_name_and_counts(tmp_path):
    write_coco_images(tmp_path / "val", {"b.png": 20, "c.png": 30, "a.png": 10})
    coco = {"images": [{"id": 7, "file_name": "b.png"}, {"id": 8, "file_name": "c.png"},
                       {"id": 9, "file_name": "a.png"}]}
    x, ids = load_detection_set(tmp_path / "val", coco, {"preprocess": PLAIN, "count": 2})
    assert ids == [9, 7]
    assert x.shape == (2, 6, 8, 3) and x.dtype == np.float32
    assert x[:, 0, 0, 0].tolist() == [10.0, 20.0]
    nchw = {"preprocess": {**PLAIN, "resize": [4, 4], "layout": "NCHW"}}
    x, ids = load_detection_set(tmp_path / "val", coco, nchw)
    assert ids == [9, 7, 8] and x.shape == (3, 3, 4, 4)


def test_load_detection_set_names_a_missing_image(tmp_path):
    write_coco_images(tmp_path / "val", {"a.png": 10})
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/b.png"}]}
    with pytest.raises(StepError, match=r"val/sub/b.png: listed in the validation annotations "
                                        r"\(images\[\].file_name 'sub/b.png'\) but not found"):
        load_detection_set(tmp_path / "val", coco, {"preprocess": PLAIN})


# -- a real detector ----------------------------------------------------------------------


@pytest.mark.skipif(not ULTRAFACE.exists(), reason="needs ../shared/models/ultraface")
def test_ultraface_decodes_the_faces_in_real_photos():
    """UltraFace's recipe: boxes-scores, background column 0, boxes already normalized
    corners. 13.jpg shows two men shaking hands, 2.jpg four nurses (checked by eye)."""
    import onnxruntime as ort

    coco = {"images": [{"id": 13, "file_name": "13.jpg"}, {"id": 2, "file_name": "2.jpg"}]}
    pre = {"resize": [240, 320], "mean": [127] * 3, "std": [128] * 3, "scale": 1.0,
           "layout": "NCHW"}
    x, ids = load_detection_set(ULTRAFACE / "imgs", coco, {"preprocess": pre})
    assert ids == [13, 2]
    decode = load_decoder({"name": "boxes-scores", "background": 0})
    faces = {}
    for model in ("version-RFB-320.onnx", "version-slim-320.onnx"):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the model lists its weights as inputs: warnings
        session = ort.InferenceSession(str(ULTRAFACE / model), options,
                                       providers=["CPUExecutionProvider"])
        outputs = [session.run(None, {"input": sample[None]}) for sample in x]
        scores = outputs[0][0]
        assert scores[0].sum(axis=-1) == pytest.approx(1.0, abs=1e-5)  # already softmax
        assert scores[0, :, 0].mean() > 0.8  # most priors see background: column 0
        faces[model] = [decode(o)[0] for o in outputs]
    rfb = faces["version-RFB-320.onnx"]
    assert [int((d.scores > 0.7).sum()) for d in rfb] == [2, 4]
    assert all((d.classes == 0).all() and d.boxes.min() >= 0 and d.boxes.max() <= 1
               for d in rfb)
    # 13.jpg: one face in each half of the picture, a little taller than wide.
    two = rfb[0].boxes[rfb[0].scores > 0.7]
    assert sorted(((two[:, 0] + two[:, 2]) / 2 > 0.5).tolist()) == [False, True]
    assert np.all((two[:, 3] - two[:, 1]) * 240 > (two[:, 2] - two[:, 0]) * 320)
    # The two UltraFace variants find the same faces.
    assert box_agreement(rfb, faces["version-slim-320.onnx"], score_threshold=0.7) == 1.0
