"""Detection with your own ONNX model: the common YOLO-style output layouts, read from the model at load time.

The contract, checked when the model is loaded:

* one image input ``(1, 3, H, W)`` (NCHW; the batch axis may be dynamic). Float32/float16 inputs are fed RGB
  scaled to [0, 1] by the uint8 range; uint8 inputs are fed raw RGB. H and W are read from the model when
  fixed; when dynamic, ``input_size`` gives them.
* a first output of rank 3 in one of these layouts, boxes in the model's input pixels (the letterboxed image):

  ============ ================ ==========================================================================
  layout       shape            columns
  ============ ================ ==========================================================================
  ``yolov5``   ``(1, N, 5+C)``  cx, cy, w, h, objectness, C class scores (YOLOv5, YOLOv7)
  ``yolov8``   ``(1, 4+C, N)``  cx, cy, w, h, C class scores, no objectness (YOLOv8, YOLO11)
  ``end2end``  ``(1, N, 6)``    x1, y1, x2, y2, score, class id, already non-maximum suppressed
  ============ ================ ==========================================================================

``layout = "auto"`` tells them apart by the output shape (the smaller axis holds the box and score columns).
``(1, N, 6)`` with N >= 6 fits both ``end2end`` and a one-class ``yolov5``, so it needs ``layout`` set. The
model is run once on a blank image when it is loaded, so dynamic output axes are checked with their real sizes;
the number of boxes may then change from frame to frame (end-to-end models), what each box holds may not.

Each frame is letterboxed (aspect ratio kept, padded with grey 114, as the YOLO models were trained), run, and
the boxes above ``conf_threshold`` are suppressed per class (greedy NMS at ``iou_threshold``), mapped back to
the frame and clipped to it. Any contract problem raises :class:`DetectorContractError`, one line naming the
model, what was found, what is accepted and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.types import Detections, FloatArray, Frame, IntArray, UInt8Array

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("auto", "yolov5", "yolov8", "end2end")
LETTERBOX_GREY = 114  # the padding value YOLO models are trained with
MAX_CANDIDATES = 30_000  # boxes above the confidence threshold kept for NMS (the best-scoring ones)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
_ACCEPTED = ("accepted layouts: yolov5 (1, N, 5 + C), yolov8 (1, 4 + C, N), end2end (1, N, 6), "
             "boxes in input pixels")


class DetectorContractError(ValueError):
    """The ONNX detection model does not fit the detector contract.

    The message is one line: ``<model>: <problem>; <fix>``. The parts are kept as attributes.

    Attributes:
        path: the model file.
        problem: what is wrong (the shape or type found).
        fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}" if fix else f"{self.path}: {problem}")


@dataclass(frozen=True)
class DetectorContract:
    """What was read from the model.

    Attributes:
        input_name: the image input.
        height: input height fed to the model, pixels.
        width: input width fed to the model, pixels.
        dtype: input dtype (np.float32, np.float16 or np.uint8).
        output_name: the prediction output.
        layout: "yolov5", "yolov8" or "end2end".
        num_classes: C, the number of class-score columns; 0 for end2end (class ids come as a column).
        output_shape: the output's shape on a ``height x width`` input.
    """

    input_name: str
    height: int
    width: int
    dtype: type
    output_name: str
    layout: str
    num_classes: int
    output_shape: tuple[int, ...]


def resolve_layout(shape: Sequence[int], layout: str = "auto", path: str | os.PathLike[str] = "model",
                   output: str = "output") -> tuple[str, int]:
    """The output layout and class count for an output of concrete ``shape``.

    Args:
        shape: the output's shape on a real input.
        layout: "auto" (from the shape) or one of "yolov5", "yolov8", "end2end" (checked against the shape).
        path: the model, for messages.
        output: the output's name, for messages.

    Returns:
        ``(layout, num_classes)``; ``num_classes`` is 0 for end2end.

    Raises:
        ValueError: an unknown ``layout``.
        DetectorContractError: the shape fits no accepted layout, fits two of them ("auto" only), or does not
            fit the layout asked for.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    shape = tuple(int(d) for d in shape)
    found = f"output {output!r} has shape {list(shape)}"
    if len(shape) != 3 or shape[0] != 1:
        raise DetectorContractError(path, f"{found}, which fits no layout",
                                    f"{_ACCEPTED}; re-export the model with one of them")
    _, a, b = shape
    asked = layout
    if layout == "auto":
        if b == 6 and a >= 6:
            raise DetectorContractError(path, f"{found}, which fits both end2end (x1, y1, x2, y2, score, class) "
                                              f"and yolov5 with one class",
                                        "set [detector] layout = 'end2end' or 'yolov5'")
        # The box-and-score axis is the short one. (1, N < 6, 6) is an end-to-end model that found few boxes.
        layout = "end2end" if b == 6 else "yolov8" if a < b else "yolov5"
    if layout == "end2end" and b == 6:
        return "end2end", 0
    if layout == "yolov5" and b >= 6:
        return "yolov5", b - 5
    if layout == "yolov8" and a >= 5:
        return "yolov8", a - 4
    if asked == "auto":
        raise DetectorContractError(path, f"{found}, which fits no layout",
                                    f"{_ACCEPTED}; re-export the model with one of them")
    need = {"end2end": "(1, N, 6)", "yolov5": "(1, N, 5 + C), C >= 1", "yolov8": "(1, 4 + C, N), C >= 1"}[layout]
    raise DetectorContractError(path, f"{found}, which does not fit [detector] layout = {layout!r} {need}",
                                f"{_ACCEPTED}; set layout = 'auto' or the model's layout")


def letterbox(image: UInt8Array, size: tuple[int, int]) -> tuple[UInt8Array, tuple[float, float], tuple[int, int]]:
    """Resize ``image`` into ``size`` keeping its aspect ratio, centred, padded with grey 114.

    Args:
        image: ``(h, w, C)`` uint8.
        size: ``(H, W)`` of the result, pixels.

    Returns:
        ``(padded, (sx, sy), (left, top))``: the ``(H, W, C)`` uint8 image, the scale of the resized content
        along x and y (resized pixels per source pixel), and the offset of its top-left corner. A point
        ``(x, y)`` of ``padded`` is ``((x - left) / sx, (y - top) / sy)`` in ``image``.
    """
    h, w = image.shape[:2]
    out_h, out_w = size
    r = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    resized = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h),
                                                                   interpolation=cv2.INTER_LINEAR)
    left, top = (out_w - new_w) // 2, (out_h - new_h) // 2
    padded = np.full((out_h, out_w, image.shape[2]), LETTERBOX_GREY, np.uint8)
    padded[top:top + new_h, left:left + new_w] = resized
    return padded, (new_w / w, new_h / h), (left, top)


def decode(pred: npt.NDArray[np.float32], layout: str) -> tuple[FloatArray, FloatArray, IntArray]:
    """Raw predictions of one image -> candidate boxes.

    Args:
        pred: the output without its batch axis: ``(N, 5 + C)`` (yolov5), ``(4 + C, N)`` (yolov8) or
            ``(N, 6)`` (end2end), float32.
        layout: "yolov5", "yolov8" or "end2end".

    Returns:
        ``(xyxy, score, class_id)``: ``(N, 4)`` float32 boxes in input pixels, ``(N,)`` float32 scores
        (yolov5: objectness x best class score; yolov8: best class score) and ``(N,)`` int64 class ids.
        Rows with a non-finite value are left out.
    """
    if layout == "yolov8":
        pred = pred.T
    pred = pred[np.all(np.isfinite(pred), axis=1)]
    if layout == "end2end":
        return (np.ascontiguousarray(pred[:, :4], np.float32), pred[:, 4].astype(np.float32),
                np.rint(pred[:, 5]).astype(np.int64))
    scores = pred[:, 5:] * pred[:, 4:5] if layout == "yolov5" else pred[:, 4:]
    class_id = np.argmax(scores, axis=1).astype(np.int64)
    score = np.take_along_axis(scores, class_id[:, None], axis=1)[:, 0].astype(np.float32)
    cx, cy, bw, bh = (pred[:, i] for i in range(4))
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    return xyxy, score, class_id


def nms_xyxy(xyxy: FloatArray, score: FloatArray, iou_threshold: float,
             class_id: IntArray | None = None) -> IntArray:
    """Greedy non-maximum suppression, within each class when ``class_id`` is given.

    Args:
        xyxy: ``(N, 4)`` boxes.
        score: ``(N,)`` scores.
        iou_threshold: a box whose IoU with a better-scoring kept box is above this is suppressed.
        class_id: ``(N,)`` int class ids; boxes of different classes never suppress each other.

    Returns:
        Indices of the kept boxes, best score first (ties: the earlier row first), int64.
    """
    boxes = np.asarray(xyxy, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if class_id is not None:
        # Shift each class into its own region so that boxes of two classes cannot overlap.
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (np.asarray(class_id, np.float64) * span)[:, None]
    x1, y1, x2, y2 = boxes.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


class OnnxDetector:
    """Objects found by an ONNX YOLO-style detection model.

    Args:
        path: the ONNX file.
        input_size: side, in pixels, of the square input fed to a model whose height and width are dynamic;
            a model with a fixed input size is fed that size.
        conf_threshold: boxes scoring below this are dropped, in [0, 1].
        iou_threshold: NMS: a box overlapping a better one of its class by more IoU than this is dropped.
        classes: keep only these class ids; empty keeps every class.
        max_detections: at most this many boxes per frame, the best-scoring ones.
        layout: "auto" (from the output shape), "yolov5", "yolov8" or "end2end".
        device: "auto" (CUDA when usable, else CPU), "cpu" or "cuda".
        threads: intra-op threads for the CPU provider; 0 lets ONNX Runtime decide.

    Raises:
        ValueError: an argument out of range or an unknown layout (the valid ones are named).
        DetectorContractError: a missing or unloadable model, or one that does not fit the contract.
    """

    def __init__(self, path: str | os.PathLike[str], input_size: int = 640, conf_threshold: float = 0.25,
                 iou_threshold: float = 0.45, classes: Sequence[int] = (), max_detections: int = 300,
                 layout: str = "auto", device: str = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        from pipeline.encoder import EncoderContractError, select_providers, session_options

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        if input_size < 1 or max_detections < 1 or threads < 0:
            raise ValueError(f"input_size and max_detections must be >= 1 and threads >= 0, got {input_size}, "
                             f"{max_detections} and {threads}")
        if not (0.0 <= conf_threshold <= 1.0 and 0.0 <= iou_threshold <= 1.0):
            raise ValueError(f"conf_threshold and iou_threshold must be in [0, 1], got {conf_threshold} and "
                             f"{iou_threshold}")
        if any(c < 0 for c in classes):
            raise ValueError(f"classes must be class ids >= 0, got {list(classes)}")
        self.path = Path(path)
        self.conf_threshold = float(conf_threshold)
        self.iou_threshold = float(iou_threshold)
        self.classes = tuple(int(c) for c in classes)
        self.max_detections = int(max_detections)
        if not self.path.is_file():
            raise DetectorContractError(self.path, "detection model not found",
                                        "set [detector] model to an ONNX detection model file")
        opts = session_options(threads)
        try:
            providers = select_providers(device, "detector")
        except EncoderContractError as exc:
            raise DetectorContractError(self.path, str(exc)) from None
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorContractError(self.path, f"not a loadable ONNX model ({first})",
                                        "export the detector to ONNX again") from None
        self.provider = self.session.get_providers()[0]
        if providers[0] == "CUDAExecutionProvider":
            log.info("detector on %s", self.provider)
        self.contract = self._read_contract(input_size, layout)
        c = self.contract
        if c.num_classes and self.classes and max(self.classes) >= c.num_classes:
            raise DetectorContractError(self.path, f"[detector] classes = {list(self.classes)} but the model has "
                                                   f"{c.num_classes} classes",
                                        f"use class ids 0 .. {c.num_classes - 1}")
        self.input_size = (c.height, c.width)
        classes_read = (f"{c.num_classes} class{'es' if c.num_classes != 1 else ''}" if c.num_classes
                        else "class ids from the model")
        log.info("detector %s: %s layout, %s, input %dx%d %s", self.path.name, c.layout, classes_read, c.height,
                 c.width, np.dtype(c.dtype).name)

    def _read_contract(self, input_size: int, layout: str) -> DetectorContract:
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        need_input = "the detector needs one image input (1, 3, H, W) (NCHW), float32, float16 or uint8"
        if len(inputs) != 1:
            raise DetectorContractError(self.path, f"model has {len(inputs)} inputs "
                                                   f"({', '.join(i.name for i in inputs)})",
                                        f"{need_input}; re-export it with the image as its only input")
        inp = inputs[0]
        shape = list(inp.shape)
        if inp.type not in _ORT_DTYPES:
            raise DetectorContractError(self.path, f"input {inp.name!r} has type {inp.type}",
                                        f"{need_input}; re-export it with one of those types")
        if len(shape) != 4 or shape[1] != 3:
            raise DetectorContractError(self.path, f"input {inp.name!r} has shape {shape}",
                                        f"{need_input}; re-export it with that shape")
        if isinstance(shape[0], int) and shape[0] not in (1, -1, 0):
            raise DetectorContractError(self.path, f"input {inp.name!r} has a fixed batch of {shape[0]}",
                                        "re-export it with batch 1 or a dynamic batch")
        h, w = (int(d) if isinstance(d, int) and d > 0 else input_size for d in shape[2:])
        dtype = _ORT_DTYPES[inp.type]
        if not outputs:
            raise DetectorContractError(self.path, "model has no outputs", _ACCEPTED)
        out = outputs[0]
        declared = list(out.shape)
        if len(declared) != 3:
            raise DetectorContractError(self.path, f"output {out.name!r} has shape {declared} "
                                                   f"(rank {len(declared)}), which fits no layout",
                                        f"{_ACCEPTED}; re-export the model with one of them")
        # Run once on a blank image: dynamic output axes get their real sizes, and a model that cannot run
        # at this input size fails here, at load time, rather than on the first frame.
        blank = np.full((1, 3, h, w), LETTERBOX_GREY, np.uint8)
        try:
            raw = self.session.run([out.name], {inp.name: self._scale(blank, dtype)})[0]
        except Exception as exc:  # onnxruntime's own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorContractError(self.path, f"the model fails on a {h}x{w} input ({first})",
                                        "check [detector] input_size against the size the model was "
                                        "exported for") from None
        raw = np.asarray(raw)
        resolved, num_classes = resolve_layout(raw.shape, layout, self.path, out.name)
        return DetectorContract(inp.name, h, w, dtype, out.name, resolved, num_classes, tuple(raw.shape))

    @staticmethod
    def _scale(x: UInt8Array, dtype: type) -> np.ndarray:
        """uint8 ``(1, 3, H, W)`` RGB -> the model's input dtype (scaled by the uint8 range, not by content)."""
        if dtype == np.uint8:
            return np.ascontiguousarray(x)
        return np.ascontiguousarray(x.astype(np.float32) * np.float32(1.0 / np.iinfo(np.uint8).max), dtype=dtype)

    def preprocess(self, image: UInt8Array) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        """``(H, W, 3)`` uint8 BGR frame -> ``(1, 3, h, w)`` model input, letterbox scale and offset."""
        padded, scale, offset = letterbox(image, self.input_size)
        rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
        return self._scale(rgb.transpose(2, 0, 1)[None], self.contract.dtype), scale, offset

    def detect(self, frame: Frame) -> Detections:
        """Boxes of ``frame``: ``xyxy`` pixels of the frame, clipped to it; confidence; the model's class ids."""
        c = self.contract
        x, (sx, sy), (left, top) = self.preprocess(frame.image)
        raw = np.asarray(self.session.run([c.output_name], {c.input_name: x})[0])
        columns = 1 if c.layout == "yolov8" else 2  # the number of boxes may change, not what a box holds
        if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[columns] != c.output_shape[columns]:
            raise DetectorContractError(self.path, f"output {c.output_name!r} has shape {list(raw.shape)} on a "
                                                   f"frame, {list(c.output_shape)} at load time",
                                        "re-export the model so that only the number of boxes may vary")
        xyxy, score, class_id = decode(np.asarray(raw[0], np.float32), c.layout)
        keep = score >= self.conf_threshold
        if self.classes:
            keep &= np.isin(class_id, self.classes)
        xyxy, score, class_id = xyxy[keep], score[keep], class_id[keep]
        if len(score) > MAX_CANDIDATES:
            best = np.argsort(-score, kind="stable")[:MAX_CANDIDATES]
            xyxy, score, class_id = xyxy[best], score[best], class_id[best]
        if c.layout == "end2end":  # already suppressed by the model
            order = np.argsort(-score, kind="stable")
        else:
            order = nms_xyxy(xyxy, score, self.iou_threshold, class_id)
        # Letterbox pixels -> frame pixels, clipped to the frame; boxes wholly in the padding vanish.
        offset = np.array([left, top, left, top], np.float32)
        scale = np.array([sx, sy, sx, sy], np.float32)
        frame_xyxy = np.clip((xyxy[order] - offset) / scale, 0, np.array([frame.width, frame.height] * 2, np.float32))
        frame_xyxy = frame_xyxy.astype(np.float32)
        ok = (frame_xyxy[:, 2] > frame_xyxy[:, 0]) & (frame_xyxy[:, 3] > frame_xyxy[:, 1])
        kept = np.flatnonzero(ok)[:self.max_detections]
        return Detections(frame_xyxy[kept], np.clip(score[order][kept], 0.0, 1.0), class_id[order][kept])

    def reset(self) -> None:
        """Nothing to forget: each frame is detected on its own."""
