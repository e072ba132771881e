"""The ONNX detector on real ONNX Runtime sessions over small detection models built here, whose outputs are known."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline import app
from pipeline.config import DETECTOR_LAYOUTS, ConfigError, DetectorConfig, load_config
from pipeline.detect.onnx_detector import (
    LAYOUTS,
    DetectorContractError,
    OnnxDetector,
    letterbox,
    nms_xyxy,
)
from pipeline.types import Frame

REPO = Path(__file__).resolve().parents[3]

# --- models ---------------------------------------------------------------------------------------------------


def save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> Path:
    graph = helper.make_graph(nodes, "detector", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_model(path: Path, raw: np.ndarray, input_shape: list | None = None,
                   dtype: int = TensorProto.FLOAT, out_shape: list | None = None) -> Path:
    """A 'detector' whose output is always ``raw``: ``y = raw + 0 * max(x)`` (the image is read, not used)."""
    x = helper.make_tensor_value_info("images", dtype, input_shape or [1, 3, 64, 64])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape or list(raw.shape))
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["xf"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["m0"]),
             helper.make_node("Add", ["raw", "m0"], ["output0"])]
    inits = [numpy_helper.from_array(raw.astype(np.float32), "raw"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    return save(path, nodes, [x], [y], inits)


def red_probe_model(path: Path, dtype: int) -> Path:
    """yolov8 layout ``(1, 5, 8)``: one box (cx, cy, w, h) = (4, 4, 4, 4) scored by input channel 0 at pixel (4, 4),
    then 7 empty boxes.

    A uint8 model scales by 1/255 itself, so every dtype scores a pure red frame (R = 204) 0.8 when the detector
    feeds RGB scaled by dtype, and a pure blue frame 0.
    """
    x = helper.make_tensor_value_info("images", dtype, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 8])
    scale = 1 / 255 if dtype == TensorProto.UINT8 else 1.0
    nodes = [helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Slice", ["xf", "starts", "ends"], ["px"]),  # (1, 1, 1, 1): channel 0 at (4, 4)
             helper.make_node("Mul", ["px", "scale"], ["pxs"]),
             helper.make_node("Reshape", ["pxs", "shape"], ["score"]),
             helper.make_node("Concat", ["box", "score"], ["first"], axis=1),
             helper.make_node("Concat", ["first", "empty"], ["output0"], axis=2)]
    inits = [numpy_helper.from_array(np.array([0, 0, 4, 4], np.int64), "starts"),
             numpy_helper.from_array(np.array([1, 1, 5, 5], np.int64), "ends"),
             numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
             numpy_helper.from_array(np.full((1, 4, 1), 4, np.float32), "box"),
             numpy_helper.from_array(np.zeros((1, 5, 7), np.float32), "empty")]
    return save(path, nodes, [x], [y], inits)


def bright_box_model(path: Path, input_shape: list) -> Path:
    """A real one-class detector, yolov8 layout ``(1, 5, 8)``: the bounding box of the pixels whose mean over RGB
    is above 0.5, in input pixels, scored 1 (0 when there are none), then 7 empty boxes."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 8])
    n = helper.make_node
    nodes = [n("ReduceMean", ["images", "ax1"], ["grey"], keepdims=0),  # (1, H, W)
             n("Greater", ["grey", "half"], ["fg"]),
             n("Cast", ["fg"], ["m"], to=TensorProto.FLOAT),
             n("Shape", ["images"], ["shape"]),
             n("ReduceMax", ["m", "ax1"], ["cols"], keepdims=0),  # (1, W): a bright pixel in the column
             n("ReduceMax", ["m", "ax2"], ["rows"], keepdims=0),  # (1, H)
             n("ReduceMax", ["m"], ["score1"], keepdims=0),
             n("Reshape", ["score1", "one_one"], ["score"])]
    for axis, mask, name in ((3, "cols", "x"), (2, "rows", "y")):
        nodes += [n("Gather", ["shape", f"i{axis}"], [f"{name}len"]),
                  n("Cast", [f"{name}len"], [f"{name}lenf"], to=TensorProto.FLOAT),
                  n("Range", ["zero", f"{name}lenf", "one"], [f"{name}idx"]),  # pixel index along the axis
                  n("Mul", [mask, f"{name}idx"], [f"{name}on"]),
                  n("Sub", ["one", mask], [f"{name}off"]),
                  n("Mul", [f"{name}off", "big"], [f"{name}offbig"]),
                  n("Add", [f"{name}on", f"{name}offbig"], [f"{name}lo_in"]),
                  n("ReduceMin", [f"{name}lo_in", "ax1"], [f"{name}1"], keepdims=1),  # first bright index
                  n("Add", [f"{name}idx", "one"], [f"{name}idx1"]),
                  n("Mul", [mask, f"{name}idx1"], [f"{name}hi_in"]),
                  n("ReduceMax", [f"{name}hi_in", "ax1"], [f"{name}2"], keepdims=1),  # last bright index + 1
                  n("Add", [f"{name}1", f"{name}2"], [f"{name}sum"]),
                  n("Mul", [f"{name}sum", "half"], [f"c{name}"]),
                  n("Sub", [f"{name}2", f"{name}1"], [f"{name}size"])]
    nodes += [n("Concat", ["cx", "cy", "xsize", "ysize", "score"], ["flat"], axis=1),
              n("Unsqueeze", ["flat", "ax2"], ["first"]),
              n("Concat", ["first", "empty"], ["output0"], axis=2)]
    inits = [numpy_helper.from_array(np.array(v, dt), name) for name, v, dt in (
        ("ax1", [1], np.int64), ("ax2", [2], np.int64), ("half", 0.5, np.float32), ("zero", 0.0, np.float32),
        ("one", 1.0, np.float32), ("big", 1e6, np.float32), ("one_one", [1, 1], np.int64),
        ("i3", 3, np.int64), ("i2", 2, np.int64), ("empty", np.zeros((1, 5, 7)), np.float32))]
    return save(path, nodes, [x], [y], inits)


def tiny_encoder(path: Path) -> Path:
    """``(N, 3, 16, 16)`` -> ``(N, 3)`` channel means: a real, checkable embedding."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
    return save(path, nodes, [x], [y], [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])


# --- raw predictions with known answers -----------------------------------------------------------------------
# A 128 x 256 (h x w) frame letterboxed into 64 x 64: scale 0.25, content at rows 16..48, so a letterbox point
# (x, y) is frame point (x / 0.25, (y - 16) / 0.25). Two classes. Boxes in letterbox pixels (cx, cy, w, h):
CANDIDATES = [  # (cx, cy, w, h), objectness, (class 0, class 1) scores
    ((16, 32, 8, 8), 1.0, (0.9, 0.1)),   # A: kept -> frame (48, 48, 80, 80), 0.9, class 0
    ((17, 32, 8, 8), 1.0, (0.8, 0.05)),  # B: IoU 0.78 with A, same class -> suppressed
    ((17, 32, 8, 8), 1.0, (0.05, 0.7)),  # C: B's box, class 1 -> kept (NMS is per class)
    ((48, 40, 16, 8), 1.0, (0.2, 0.1)),  # D: below conf_threshold 0.25 -> dropped
    ((60, 20, 16, 16), 1.0, (0.0, 0.6)),  # E: crosses the frame's top and right edges -> clipped
    ((32, 8, 8, 8), 1.0, (0.95, 0.0)),   # F: wholly in the top padding -> nothing left after clipping
    ((40, 40, 4, 4), 0.5, (0.1, 0.9)),   # G: yolov5 scores objectness x class = 0.45
    ((30, 30, 6, 6), 0.5, (0.45, 0.0)),  # H: yolov5 0.225, below the threshold though its class score is not
]
EXPECTED = [  # frame xyxy, score, class
    ((48, 48, 80, 80), 0.9, 0),
    ((52, 48, 84, 80), 0.7, 1),
    ((208, 0, 256, 48), 0.6, 1),
    ((152, 88, 168, 104), 0.45, 1),
]
PADDING_ROWS = 12  # all-zero rows, as exported models pad their fixed number of boxes


def yolov5_raw() -> np.ndarray:
    rows = [[*box, obj, *cls] for box, obj, cls in CANDIDATES] + [[0.0] * 7] * PADDING_ROWS
    return np.asarray(rows, np.float32)[None]  # (1, N, 5 + C)


def yolov8_raw() -> np.ndarray:
    rows = [[*box, *(obj * c for c in cls)] for box, obj, cls in CANDIDATES] + [[0.0] * 6] * PADDING_ROWS
    return np.asarray(rows, np.float32).T[None]  # (1, 4 + C, N): no objectness, the class scores carry it


def end2end_raw() -> np.ndarray:
    rows = [[12, 28, 20, 36, 0.9, 0],   # A
            [13, 28, 21, 36, 0.8, 0],   # B: overlaps A; the model's own NMS kept it, so it stays
            [52, 12, 68, 28, 0.6, 1],   # E: clipped
            [28, 4, 36, 12, 0.95, 0],   # F: in the padding
            [40, 36, 56, 44, 0.2, 0]]   # below the threshold
    return np.asarray(rows + [[0.0] * 6] * PADDING_ROWS, np.float32)[None]  # (1, N, 6)


END2END_EXPECTED = [((48, 48, 80, 80), 0.9, 0), ((52, 48, 84, 80), 0.8, 0), ((208, 0, 256, 48), 0.6, 1)]


def frame(h: int = 128, w: int = 256, bgr: tuple[int, int, int] = (30, 30, 30)) -> Frame:
    return Frame(0, 0.0, np.full((h, w, 3), bgr, np.uint8))


def assert_detections(dets, expected) -> None:  # type: ignore[no-untyped-def]
    assert len(dets) == len(expected), (dets.xyxy, dets.confidence, dets.class_id)
    np.testing.assert_allclose(dets.xyxy, [e[0] for e in expected], atol=1e-4)
    np.testing.assert_allclose(dets.confidence, [e[1] for e in expected], rtol=1e-6)
    np.testing.assert_array_equal(dets.class_id, [e[2] for e in expected])
    assert dets.xyxy.dtype == np.float32 and dets.class_id.dtype == np.int64


# --- pure functions -------------------------------------------------------------------------------------------


def test_letterbox_keeps_aspect_ratio_and_pads_grey() -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    out, scale, offset = letterbox(wide, (64, 64))
    assert out.shape == (64, 64, 3) and scale == (0.32, 0.32) and offset == (0, 16)
    assert np.all(out[:16] == 114) and np.all(out[48:] == 114)
    np.testing.assert_array_equal(out[16:48], cv2.resize(wide, (64, 32), interpolation=cv2.INTER_LINEAR))
    tall, (sx, sy), (left, top) = letterbox(np.zeros((200, 100, 3), np.uint8), (64, 96))
    assert (sx, sy, left, top) == (0.32, 0.32, 32, 0)  # 32 x 64 content centred in a 96-wide input
    assert np.all(tall[:, :32] == 114) and np.all(tall[:, 32:64] == 0) and np.all(tall[:, 64:] == 114)
    same, scale, offset = letterbox(wide, (100, 200))
    np.testing.assert_array_equal(same, wide)
    assert scale == (1.0, 1.0) and offset == (0, 0)


BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
CLASSES = np.array([0, 0, 0, 1], np.int64)


@pytest.mark.parametrize(
    ("iou", "classes", "kept"),
    [
        (0.5, CLASSES, [0, 2, 3]),  # IoU(0, 1) = 90 / 110 = 0.82: suppressed; 3 is the same box, other class
        (0.5, None, [0, 2]),        # class-agnostic: 3 is 0's box
        (0.9, None, [0, 1, 2]),     # 0.82 is not above 0.9
        (1.0, None, [0, 1, 2, 3]),  # nothing is above IoU 1
    ],
)
def test_nms_greedy_per_class(iou: float, classes: np.ndarray | None, kept: list[int]) -> None:
    np.testing.assert_array_equal(nms_xyxy(BOXES, SCORES, iou, classes), kept)


def test_nms_orders_by_score_and_takes_empty_input() -> None:
    np.testing.assert_array_equal(nms_xyxy(BOXES[[2, 0]], np.array([0.1, 0.5]), 0.5), [1, 0])
    assert nms_xyxy(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


def test_layouts_match_the_config_choices() -> None:
    assert DETECTOR_LAYOUTS == LAYOUTS


# --- detection through real ONNX Runtime sessions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "layout", "found", "expected"),
    [
        (yolov8_raw(), "auto", "yolov8", EXPECTED),
        (yolov8_raw(), "yolov8", "yolov8", EXPECTED),
        (yolov5_raw(), "auto", "yolov5", EXPECTED),
        (yolov5_raw(), "yolov5", "yolov5", EXPECTED),
        (end2end_raw(), "end2end", "end2end", END2END_EXPECTED),
    ],
    ids=["yolov8-auto", "yolov8", "yolov5-auto", "yolov5", "end2end"],
)
def test_layouts_give_the_known_boxes(tmp_path: Path, raw: np.ndarray, layout: str, found: str,
                                      expected: list) -> None:
    det = OnnxDetector(constant_model(tmp_path / "m.onnx", raw), layout=layout, device="cpu")
    assert det.contract.layout == found and det.input_size == (64, 64)
    assert det.contract.num_classes == (0 if found == "end2end" else 2)
    assert_detections(det.detect(frame()), expected)


@pytest.mark.parametrize(
    ("classes", "max_detections", "conf", "expected"),
    [
        ((1,), 300, 0.25, [EXPECTED[1], EXPECTED[2], EXPECTED[3]]),
        ((0,), 300, 0.25, [EXPECTED[0]]),
        ((), 2, 0.25, EXPECTED[:2]),  # F scores 0.95 but lies in the padding: it takes no place in the top 2
        ((), 300, 0.65, EXPECTED[:2]),
        ((1,), 1, 0.0, [EXPECTED[1]]),
    ],
)
def test_class_filter_max_detections_and_threshold(tmp_path: Path, classes: tuple[int, ...], max_detections: int,
                                                   conf: float, expected: list) -> None:
    det = OnnxDetector(constant_model(tmp_path / "m.onnx", yolov8_raw()), classes=classes,
                       max_detections=max_detections, conf_threshold=conf, device="cpu")
    assert_detections(det.detect(frame()), expected)


def test_one_class_yolov5_needs_the_layout_named(tmp_path: Path) -> None:
    raw = np.zeros((1, 10, 6), np.float32)
    raw[0, 0] = [16, 32, 8, 8, 0.5, 0.8]  # cx, cy, w, h, objectness, class 0
    path = constant_model(tmp_path / "m.onnx", raw)
    with pytest.raises(DetectorContractError, match=r"fits both end2end .* and yolov5 with one class"):
        OnnxDetector(path, device="cpu")
    det = OnnxDetector(path, layout="yolov5", device="cpu")
    assert det.contract.num_classes == 1
    assert_detections(det.detect(frame()), [((48, 48, 80, 80), 0.4, 0)])


def varying_end2end_model(path: Path) -> Path:
    """end2end ``(1, K, 6)`` whose K varies: ``end2end_raw()``'s first 4 rows when some input value is above 0.5,
    else none (so the grey 114 / 255 = 0.45 probe at load time gets ``(1, 0, 6)``)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, "boxes", 6])
    n = helper.make_node
    nodes = [n("ReduceMax", ["images"], ["mx"], keepdims=1),
             n("Reshape", ["mx", "one"], ["mx1"]),
             n("Greater", ["mx1", "half"], ["bright"]),
             n("Cast", ["bright"], ["k1"], to=TensorProto.INT64),
             n("Mul", ["k1", "four"], ["k"]),
             n("Slice", ["raw", "zero", "k", "one"], ["output0"])]  # rows 0 .. k along axis 1
    inits = [numpy_helper.from_array(end2end_raw()[:, :4], "raw"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half")]
    return save(path, nodes, [x], [y], inits)


def test_end2end_number_of_boxes_may_change_between_frames(tmp_path: Path) -> None:
    det = OnnxDetector(varying_end2end_model(tmp_path / "m.onnx"), device="cpu")
    assert det.contract.layout == "end2end" and det.contract.output_shape == (1, 0, 6)  # no box on the probe
    assert len(det.detect(frame())) == 0  # dark frame: no rows
    assert_detections(det.detect(frame(bgr=(200, 200, 200))), END2END_EXPECTED)  # 4 rows, F in the padding


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8])
def test_input_is_rgb_scaled_by_dtype(tmp_path: Path, dtype: int) -> None:
    det = OnnxDetector(red_probe_model(tmp_path / "m.onnx", dtype), device="cpu")
    assert det.contract.dtype == {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                                  TensorProto.UINT8: np.uint8}[dtype]
    red = det.detect(frame(8, 8, (0, 0, 204)))  # BGR: pure red, R = 204 = 0.8 * 255
    assert_detections(red, [((2, 2, 6, 6), 0.8, 0)]) if dtype != TensorProto.FLOAT16 else \
        np.testing.assert_allclose(red.confidence, [0.8], atol=1e-3)
    assert len(det.detect(frame(8, 8, (204, 0, 0)))) == 0  # pure blue: channel 0 of the model's RGB input is 0


def bright_frame(h: int = 128, w: int = 256, box: tuple[int, int, int, int] = (100, 40, 140, 72)) -> Frame:
    img = np.full((h, w, 3), 20, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return Frame(0, 0.0, img)


@pytest.mark.parametrize("input_size", [64, 128, 96])
def test_dynamic_input_size_comes_from_config_and_boxes_map_back(tmp_path: Path, input_size: int) -> None:
    det = OnnxDetector(bright_box_model(tmp_path / "m.onnx", [1, 3, "height", "width"]), input_size=input_size,
                       device="cpu")
    assert det.input_size == (input_size, input_size)
    # 64 and 128 scale the frame by 1/4 and 1/2, exactly; 96 by 3/8, where resampling blurs the square's edges.
    atol = 1e-4 if input_size != 96 else 3.0
    d = det.detect(bright_frame())
    np.testing.assert_allclose(d.xyxy, [[100, 40, 140, 72]], atol=atol)
    np.testing.assert_array_equal(d.class_id, [0])
    assert len(det.detect(frame())) == 0  # nothing bright: score 0


def test_fixed_input_size_wins_over_config(tmp_path: Path) -> None:
    det = OnnxDetector(bright_box_model(tmp_path / "m.onnx", ["batch", 3, 64, 128]), input_size=640, device="cpu")
    assert det.input_size == (64, 128)  # the frame fits exactly at scale 1/2
    np.testing.assert_allclose(det.detect(bright_frame()).xyxy, [[100, 40, 140, 72]], atol=1e-4)


def test_reset_is_stateless(tmp_path: Path) -> None:
    det = OnnxDetector(constant_model(tmp_path / "m.onnx", yolov8_raw()), device="cpu")
    before = det.detect(frame())
    det.reset()
    np.testing.assert_array_equal(det.detect(frame()).xyxy, before.xyxy)


def test_cpu_only_machine_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.encoder import cuda_usable

    path = constant_model(tmp_path / "m.onnx", yolov8_raw())
    if cuda_usable()[0]:
        assert OnnxDetector(path, device="auto").provider == "CUDAExecutionProvider"
        return
    with caplog.at_level(logging.INFO, logger="pipeline"):
        det = OnnxDetector(path, device="auto")
    assert det.provider == "CPUExecutionProvider"
    lines = [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("detector on CPU: CUDA not usable")
    with pytest.raises(DetectorContractError, match=r"\[detector\] device = 'cuda' but CUDA is not usable"):
        OnnxDetector(path, device="cuda")


# --- contract errors ------------------------------------------------------------------------------------------


def two_input_model(path: Path) -> Path:
    a = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    b = helper.make_tensor_value_info("sizes", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 2])
    return save(path, [helper.make_node("Identity", ["sizes"], ["output0"])], [a, b], [y])


@pytest.mark.parametrize(
    ("build", "kwargs", "fragments"),
    [
        (lambda p: constant_model(p, yolov8_raw(), ["N", 3, 64]), {},
         ["input 'images' has shape ['N', 3, 64]", "(1, 3, H, W)"]),
        (lambda p: constant_model(p, yolov8_raw(), [1, 1, 64, 64]), {},
         ["input 'images' has shape [1, 1, 64, 64]", "(1, 3, H, W)"]),
        (lambda p: constant_model(p, yolov8_raw(), [4, 3, 64, 64]), {}, ["fixed batch of 4"]),
        (lambda p: constant_model(p, yolov8_raw(), dtype=TensorProto.INT32), {},
         ["input 'images' has type tensor(int32)", "float32, float16 or uint8"]),
        (two_input_model, {}, ["2 inputs (images, sizes)"]),
        (lambda p: constant_model(p, np.zeros((300, 6), np.float32)), {},
         ["output 'output0' has shape [300, 6] (rank 2)", "yolov5 (1, N, 5 + C)", "yolov8 (1, 4 + C, N)",
          "end2end (1, N, 6)", "re-export"]),
        (lambda p: constant_model(p, np.zeros((1, 4, 100), np.float32)), {},
         ["shape [1, 4, 100], which fits no layout", "yolov8 (1, 4 + C, N)"]),
        (lambda p: constant_model(p, np.zeros((1, 100, 5), np.float32)), {},
         ["shape [1, 100, 5], which fits no layout", "yolov5 (1, N, 5 + C)"]),
        (lambda p: constant_model(p, np.zeros((2, 100, 7), np.float32)), {},
         ["shape [2, 100, 7], which fits no layout"]),
        (lambda p: constant_model(p, np.zeros((1, 100, 7), np.float32)), {"layout": "end2end"},
         ["shape [1, 100, 7], which does not fit [detector] layout = 'end2end' (1, N, 6)", "set layout"]),
        (lambda p: constant_model(p, np.zeros((1, 4, 100), np.float32)), {"layout": "yolov8"},
         ["does not fit [detector] layout = 'yolov8'"]),
        (lambda p: constant_model(p, yolov8_raw()), {"classes": (0, 2)},
         ["[detector] classes = [0, 2] but the model has 2 classes", "use class ids 0 .. 1"]),
        (lambda p: p, {}, ["detection model not found", "[detector] model"]),
        (lambda p: (p.write_bytes(b"not a protobuf"), p)[1], {}, ["not a loadable ONNX model"]),
    ],
    ids=["rank3-input", "one-channel", "batch4", "int32", "two-inputs", "rank2-output", "yolov8-no-class",
         "yolov5-no-class", "batch2-output", "forced-end2end", "forced-yolov8", "class-out-of-range", "missing",
         "corrupt"],
)
def test_contract_errors_are_one_line_naming_model_shape_and_fix(tmp_path: Path, build, kwargs: dict,  # type: ignore[no-untyped-def]
                                                                 fragments: list[str]) -> None:
    path = build(tmp_path / "m.onnx")
    with pytest.raises(DetectorContractError) as err:
        OnnxDetector(path, device="cpu", **kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"layout": "yolo"}, "layout must be one of 'auto', 'yolov5', 'yolov8', 'end2end', got 'yolo'"),
        ({"conf_threshold": 1.5}, "conf_threshold and iou_threshold must be in [0, 1]"),
        ({"classes": (-1,)}, "classes must be class ids >= 0"),
        ({"max_detections": 0}, "max_detections must be >= 1"),
    ],
)
def test_bad_arguments_name_the_valid_ones(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        OnnxDetector(constant_model(tmp_path / "m.onnx", yolov8_raw()), device="cpu", **kwargs)
    assert fragment in str(err.value)


# --- config and wiring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[detector]\nlayout = "yolo"\n',
         ["[detector] layout", "'yolo'", "allowed: 'auto', 'yolov5', 'yolov8', 'end2end'"]),
        ('[detector]\nkind = "onnx"\n', ["[detector] kind = 'onnx' needs model", "set [detector] model"]),
        ('[detector]\nkind = "yolo"\n', ["[detector] kind", "allowed: 'background', 'onnx'"]),
        ("[detector]\nclasses = [0, -1]\n", ["[detector] classes", "got -1, allowed range 0"]),
        ("[detector]\nclasses = 0\n", ["[detector] classes", "expected a list"]),
        ('[detector]\nclasses = ["person"]\n', ["[detector] classes", "expected an integer", "'person'"]),
        ("[detector]\nconf_threshold = 1.5\n", ["[detector] conf_threshold", "allowed range 0.0 .. 1.0"]),
        ("[detector]\nmax_detections = 0\n", ["[detector] max_detections", "allowed range 1"]),
    ],
)
def test_config_rejects_bad_detector_values(tmp_path: Path, toml: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_config_reads_onnx_keys_and_build_detector_wires_them(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", yolov8_raw())
    path = tmp_path / "c.toml"
    path.write_text(f'[detector]\nkind = "onnx"\nmodel = "{model}"\nclasses = [1]\nmax_detections = 2\n'
                    f'conf_threshold = 0.5\niou_threshold = 0.3\nlayout = "yolov8"\ndevice = "cpu"\n')
    cfg = load_config(path)
    assert cfg.detector.classes == (1,) and cfg.detector.layout == "yolov8"
    det = app.build_detector(cfg.detector)
    assert isinstance(det, OnnxDetector)
    assert (det.classes, det.max_detections, det.conf_threshold, det.iou_threshold) == ((1,), 2, 0.5, 0.3)
    assert_detections(det.detect(frame()), [EXPECTED[1], EXPECTED[2]])
    assert type(app.build_detector(DetectorConfig())).__name__ == "BackgroundSubtractionDetector"


def siamstream(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_config_check_rejects_bad_detector_values(tmp_path: Path) -> None:
    config = str(REPO / "config.toml")
    proc = siamstream("-q", "config", "check", config, "--set", 'detector.layout="yolo"')
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "[detector] layout" in proc.stderr and "allowed: 'auto', 'yolov5', 'yolov8', 'end2end'" in proc.stderr
    proc = siamstream("-q", "config", "check", config, "--set", 'detector.kind="onnx"')
    assert proc.returncode == 2 and "kind = 'onnx' needs model" in proc.stderr
    model = constant_model(tmp_path / "m.onnx", yolov8_raw())
    ok = siamstream("-q", "config", "check", config, "--set", 'detector.kind="onnx"',
                    "--set", f'detector.model="{model}"', "--set", "detector.classes=[0, 1]")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr


def test_run_with_a_model_that_breaks_the_contract_is_one_clean_line(tmp_path: Path) -> None:
    model = constant_model(tmp_path / "m.onnx", np.zeros((1, 300, 6), np.float32))
    video = write_video(tmp_path / "v.avi", frames=3)
    proc = siamstream("-q", "run", "--config", str(REPO / "config.toml"), "--source", str(video),
                      "--out", str(tmp_path / "out"), "--set", 'detector.kind="onnx"',
                      "--set", f'detector.model="{model}"', "--set", "metrics.enabled=false",
                      "--set", f'encoder.model="{tiny_encoder(tmp_path / "enc.onnx")}"')
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("siamstream: error:")]
    assert len(errors) == 1 and str(model) in errors[0] and "layout = 'end2end' or 'yolov5'" in errors[0]


# --- end to end -----------------------------------------------------------------------------------------------

SIDE, STEP, X0, Y0 = 20, 3, 10, 30  # a white square moving right STEP px per frame on a dark grey belt


def write_video(path: Path, frames: int, size: tuple[int, int] = (96, 160)) -> Path:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(frames):
        img = np.full((h, w, 3), 40, np.uint8)
        x = X0 + STEP * i
        img[Y0:Y0 + SIDE, x:x + SIDE] = 255
        writer.write(img)
    writer.release()
    return path


def test_siamstream_run_with_the_onnx_detector_tracks_the_object(tmp_path: Path) -> None:
    frames = 30
    video = write_video(tmp_path / "line.avi", frames)
    detector = bright_box_model(tmp_path / "det.onnx", [1, 3, "h", "w"])
    out = tmp_path / "out"
    proc = siamstream("run", "--config", str(REPO / "config.toml"), "--source", str(video), "--out", str(out),
                      "--set", 'detector.kind="onnx"', "--set", f'detector.model="{detector}"',
                      "--set", "detector.input_size=160", "--set", "metrics.port=0",
                      "--set", f'encoder.model="{tiny_encoder(tmp_path / "enc.onnx")}"')
    assert proc.returncode == 0, proc.stderr
    assert "detector det.onnx: yolov8 layout, 1 class, input 160x160 float32" in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["frames"] == frames and last["tracks"] == 1
    rows = np.loadtxt(out / "tracks.txt", delimiter=",", ndmin=2)
    assert set(rows[:, 1]) == {1}  # one track, id 1
    assert len(rows) >= frames - 3  # confirmed after min_hits = 3 frames, then reported every frame
    for frame_no, x, y, w, h in rows[:, [0, 2, 3, 4, 5]]:
        truth = (X0 + STEP * (frame_no - 1), Y0, SIDE, SIDE)  # MOT frames count from 1
        np.testing.assert_allclose((x, y, w, h), truth, atol=2.0)
