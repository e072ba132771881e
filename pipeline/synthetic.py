"""Synthetic production line: a conveyor belt carrying parts, some of them defective, with ground truth.

``siamstream demo`` runs the whole product on this scene, so it needs no video file or camera. A fixed
top-down camera looks at a belt moving left to right between two side rails. Parts of a few kinds
("washer", "bracket", "chip", "gear") ride the belt in one or two lanes; a fraction of them carry one
defect ("scratch", "hole", "stain", "missing").

Everything (which parts, where, which defects, the flicker and noise of every frame) is decided from
``SceneConfig.seed`` when the scene is built; frames are rendered on demand, so iterating twice gives
identical frames and :meth:`ProductionLineScene.render` gives random access.

The scene is made for background subtraction: the belt texture is fixed in image space (real belts are too
uniform to track, and their wear streaks run along the motion), and only sensor noise (sigma 2 grey
levels) and a global brightness flicker (within +-2 %) change between frames where no part is.

Boxes are ``xyxy`` float32 pixel edges: a part covering columns 10..19 has x1 = 10, x2 = 20.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.tracking.matching import iou_matrix
from pipeline.types import FloatArray, Frame

BoolArray = npt.NDArray[np.bool_]

KINDS: tuple[str, ...] = ("washer", "bracket", "chip", "gear")
DEFECTS: tuple[str, ...] = ("scratch", "hole", "stain", "missing")

_SS = 2  # sprites are drawn at this supersampling factor, then reduced with area averaging (anti-aliasing)
_REF_HEIGHT = 360.0  # sizes below are pixels at this frame height; other heights scale them
_BASE_SIZE = {"washer": 70.0, "bracket": 76.0, "chip": 68.0, "gear": 80.0}
_BASE_BGR = {
    "washer": (172.0, 173.0, 176.0),  # bright zinc-plated steel
    "bracket": (186.0, 180.0, 170.0),  # brushed stainless, slightly blue
    "chip": (38.0, 37.0, 40.0),  # black epoxy package
    "gear": (64.0, 128.0, 182.0),  # bronze
}
_LIGHT = (-0.6, -0.8)  # unit vector in the image plane pointing towards the light (upper left)
_BELT_BGR = (58.0, 60.0, 63.0)
_ALPHA_SOLID = 0.5  # alpha above which a sprite pixel counts as part of the part (boxes, visibility)


@dataclass(frozen=True)
class PartTruth:
    """Ground truth for one part of the scene.

    Attributes:
        part_id: 1-based, unique per scene, in order of appearance.
        kind: one of :data:`KINDS`.
        defect: ``None`` for a good part, else one of :data:`DEFECTS`.
        first_frame: first frame where at least 50 % of the part's area is inside the image.
        last_frame: last such frame.
    """

    part_id: int
    kind: str
    defect: str | None
    first_frame: int
    last_frame: int


@dataclass(frozen=True)
class SceneConfig:
    """What the synthetic line looks like. Sizes are pixels, speeds pixels per frame.

    ``lanes`` is 1 or 2. By default the belt is empty at frame 0 and the first part enters from the left
    edge within a few frames, as when the line starts. With ``prefill`` it already carries parts at frame 0
    (the camera starts on a running line); a background subtractor that learns from the first frames then
    takes those parts' colours into its background model and needs a few hundred frames to forget them.
    """

    width: int = 640
    height: int = 360
    fps: float = 20.0
    num_frames: int = 400
    defect_rate: float = 0.3
    speed_px: float = 4.0
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    defects: tuple[str, ...] = DEFECTS
    lanes: int = 2
    prefill: bool = False

    def __post_init__(self) -> None:
        def bad(what: str, expected: str, got: object) -> ValueError:
            return ValueError(f"SceneConfig: {what} must be {expected}, got {got!r}")

        if not (160 <= self.width <= 8192 and 120 <= self.height <= 8192):
            raise bad("width x height", "within 160..8192 x 120..8192", (self.width, self.height))
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise bad("fps", "> 0", self.fps)
        if self.num_frames < 0:
            raise bad("num_frames", ">= 0", self.num_frames)
        if not 0.0 <= self.defect_rate <= 1.0:
            raise bad("defect_rate", "within [0, 1]", self.defect_rate)
        if not 0.25 <= self.speed_px <= 40.0:
            raise bad("speed_px", "within [0.25, 40]", self.speed_px)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise bad("kinds", f"a non-empty tuple of {KINDS}", self.kinds)
        if any(d not in DEFECTS for d in self.defects):
            raise bad("defects", f"a tuple of {DEFECTS}", self.defects)
        if self.defect_rate > 0 and not self.defects:
            raise bad("defects", "non-empty when defect_rate > 0", self.defects)
        if self.lanes not in (1, 2):
            raise bad("lanes", "1 or 2", self.lanes)


@dataclass(frozen=True)
class PartSprite:
    """One part as drawn, before it is placed on the belt.

    Attributes:
        bgr: ``(h, w, 3)`` float32 colour in 0..255 (not premultiplied).
        alpha: ``(h, w)`` float32 coverage in [0, 1]; 0 where the belt shows (outside, in holes).
        defect_mask: ``(h, w)`` bool, True where the defect changed the part; all False for a good part.
    """

    bgr: FloatArray
    alpha: FloatArray
    defect_mask: BoolArray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight ``xyxy`` box of the solid part (alpha > 0.5) in sprite pixels, x2/y2 exclusive."""
        ys, xs = np.nonzero(self.alpha > _ALPHA_SOLID)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    def over(self, background: FloatArray) -> FloatArray:
        """Composite onto ``background`` (``(h, w, 3)`` float32, same size): float32 ``(h, w, 3)``."""
        a = self.alpha[..., None]
        return (self.bgr * a + background * (1.0 - a)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- drawing


def _f32(a: npt.ArrayLike) -> FloatArray:
    return np.asarray(a, dtype=np.float32)


def _grid(side: int) -> tuple[FloatArray, FloatArray]:
    c = (side - 1) / 2.0
    yy, xx = np.mgrid[0:side, 0:side]
    return _f32(xx - c), _f32(yy - c)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sx: float, sy: float) -> FloatArray:
    """Gaussian noise blurred by (sx, sy) pixels, rescaled to unit standard deviation."""
    raw = rng.standard_normal(shape, dtype=np.float32)
    n = _f32(cv2.GaussianBlur(raw, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT))
    return _f32(n / max(float(n.std()), 1e-6))


def _soft(d: npt.ArrayLike) -> FloatArray:
    """Coverage from a signed distance (positive inside), one pixel wide ramp."""
    return _f32(np.clip(np.asarray(d, np.float32) + 0.5, 0.0, 1.0))


def _bevel(alpha: FloatArray, width: float, strength: float) -> FloatArray:
    """Shading of chamfered edges: edges facing the light (upper left) get brighter, the others darker."""
    solid = (alpha > _ALPHA_SOLID).astype(np.uint8)
    dt = cv2.distanceTransform(solid, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dt = cv2.GaussianBlur(dt, (0, 0), 1.0)
    gx = cv2.Sobel(dt, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(dt, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    near_edge = np.clip(1.0 - dt / width, 0.0, 1.0)
    # dt grows inwards, so -grad(dt) is the outward normal the chamfer tilts towards
    facing = -(gx * _LIGHT[0] + gy * _LIGHT[1])
    return _f32(strength * near_edge * np.clip(facing * 1.5, -1.0, 1.0))


def _washer(rng: np.random.Generator, d: float, side: int) -> tuple[FloatArray, FloatArray]:
    xx, yy = _grid(side)
    r = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    ro, ri = d / 2.0, d / 2.0 * 0.45
    alpha = _soft(ro - r) * _soft(r - ri)
    phi = math.atan2(_LIGHT[1], _LIGHT[0]) + rng.uniform(-0.3, 0.3)
    sheen = 0.17 * np.cos(2.0 * (theta - phi))  # anisotropic reflection of the turning marks
    marks = 0.025 * np.sin(r * (2 * math.pi / (1.7 * _SS)) + rng.uniform(0, 6.3))
    shade = 1.0 + sheen + marks + 0.025 * _smooth_noise(rng, (side, side), 1.2, 1.2)
    return _f32(shade + _bevel(alpha, 2.5 * _SS, 0.35)), alpha


def _bracket(rng: np.random.Generator, d: float, side: int) -> tuple[FloatArray, FloatArray]:
    c, h, w = (side - 1) / 2.0, d / 2.0, 0.4 * d
    pts = np.array([(-h, -h), (h, -h), (h, -h + w), (-h + w, -h + w), (-h + w, h), (-h, h)]) + c
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)
    alpha = np.clip((alpha - 0.5) * 1.6 + 0.5, 0.0, 1.0)  # slightly rounded corners, crisp edges
    xx, yy = _grid(side)
    hole_r = 0.16 * w
    for hx, hy in ((h - w / 2, -h + w / 2), (-h + w / 2, h - w / 2)):
        alpha = alpha * (1.0 - _soft(hole_r - np.hypot(xx - hx, yy - hy)))
    # brushed across the belt's motion: stripes along the motion would look static to a background model
    brushed = _smooth_noise(rng, (side, side), 0.45 * _SS, 14.0 * _SS)
    grain = _smooth_noise(rng, (side, side), 0.8, 0.8)
    sheen = 0.07 * np.cos((yy / d) * 2.2 + rng.uniform(-0.4, 0.4))
    shade = 1.0 + 0.075 * brushed + 0.02 * grain + sheen
    return _f32(shade + _bevel(alpha, 2.0 * _SS, 0.3)), _f32(alpha)


def _chip(rng: np.random.Generator, d: float, side: int, bgr: np.ndarray) -> tuple[FloatArray, FloatArray]:
    """Returns colour (not shading) and alpha: the chip has two materials."""
    xx, yy = _grid(side)
    c = (side - 1) / 2.0
    body = 0.7 * d
    pin_len, n_pins = 0.15 * d * 1.05, 6
    a_body = _soft(body / 2 - np.abs(xx)) * _soft(body / 2 - np.abs(yy))
    pins = np.zeros((side, side), np.float32)
    pitch = body / n_pins
    pin_w = 0.5 * pitch
    for i in range(n_pins):
        t = -body / 2 + (i + 0.5) * pitch
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            if sx:
                x1, x2 = sorted((sx * body / 2, sx * (body / 2 + pin_len)))
                y1, y2 = t - pin_w / 2, t + pin_w / 2
            else:
                y1, y2 = sorted((sy * body / 2, sy * (body / 2 + pin_len)))
                x1, x2 = t - pin_w / 2, t + pin_w / 2
            p1 = (round((x1 + c) * 16), round((y1 + c) * 16))
            p2 = (round((x2 + c) * 16), round((y2 + c) * 16))
            cv2.rectangle(pins, p1, p2, 1.0, -1, cv2.LINE_AA, shift=4)
    pins = np.clip(pins, 0.0, 1.0) * (1.0 - a_body)
    alpha = np.maximum(a_body, pins)
    along_pin = np.clip(np.maximum(np.abs(xx), np.abs(yy)) - body / 2, 0, None) / pin_len
    pin_shade = 1.0 + 0.12 * np.cos(along_pin * 3)
    pin_bgr = np.array([176.0, 178.0, 180.0], np.float32) * pin_shade[..., None]
    mottle = 1.0 + 0.06 * _smooth_noise(rng, (side, side), 1.0, 1.0)
    body_bgr = np.asarray(bgr, np.float32) * mottle[..., None]
    # print: pin-1 dimple and two lines of marking text, light grey laser print
    ink = np.zeros((side, side), np.float32)
    dot = (round(c - body * 0.32), round(c - body * 0.32))
    cv2.circle(ink, dot, max(1, round(body * 0.06)), 0.55, -1, cv2.LINE_AA)
    text_ink = np.zeros((side, side), np.uint8)
    scale = body / 160.0
    for text, ty in (("SQ7A", -0.02), ("2417", 0.24)):
        (tw, _th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        org = (round(c - tw / 2), round(c + ty * body))
        cv2.putText(text_ink, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, round(_SS * 0.9)),
                    cv2.LINE_AA)
    ink = np.maximum(ink, text_ink.astype(np.float32) / 255.0) * a_body
    body_bgr = body_bgr * (1.0 - ink[..., None]) + np.float32(150.0) * ink[..., None]
    shade = 1.0 + _bevel(alpha, 1.5 * _SS, 0.35)
    colour = (body_bgr * a_body[..., None] + pin_bgr * pins[..., None]) / np.maximum(alpha, 1e-3)[..., None]
    return _f32(colour * shade[..., None]), _f32(alpha)


def _gear(rng: np.random.Generator, d: float, side: int) -> tuple[FloatArray, FloatArray]:
    xx, yy = _grid(side)
    r = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    big, teeth = d / 2.0, 14
    root = 0.84 * big
    phase = np.mod(theta * teeth / (2 * math.pi) + rng.uniform(0, 1), 1.0)
    tri = 1.0 - 2.0 * np.abs(phase - 0.5)
    tooth = np.clip((tri - 0.3) / 0.3, 0.0, 1.0)
    alpha = _soft(root + (big - root) * tooth - r)
    bore = 0.17 * big
    alpha = alpha * _soft(r - bore)
    key = _soft(0.05 * big - np.abs(xx)) * _soft(-yy - 0.0) * _soft(bore + 0.07 * big + yy)
    alpha = alpha * (1.0 - key)
    n_holes, hole_r, ring = 5, 0.12 * big, 0.53 * big
    for i in range(n_holes):
        a = 2 * math.pi * i / n_holes + math.pi / 2
        alpha = alpha * (1.0 - _soft(hole_r - np.hypot(xx - ring * math.cos(a), yy - ring * math.sin(a))))
    grooves = sum(0.28 * np.exp(-(((r - g * big) / (0.55 * _SS)) ** 2)) for g in (0.32, 0.72))
    web = 0.06 * (_soft(r - 0.32 * big) * _soft(0.72 * big - r))
    phi = math.atan2(_LIGHT[1], _LIGHT[0]) + rng.uniform(-0.3, 0.3)
    sheen = 0.13 * np.cos(2.0 * (theta - phi))
    marks = 0.02 * np.sin(r * (2 * math.pi / (1.5 * _SS)))
    grain = 0.03 * _smooth_noise(rng, (side, side), 1.2, 1.2)
    shade = 1.0 + sheen + marks + grain - grooves - web
    return _f32(shade + _bevel(alpha, 2.0 * _SS, 0.35)), _f32(alpha)


def _draw_good(kind: str, rng: np.random.Generator, size_px: float) -> PartSprite:
    """Draw a good part of ``kind`` about ``size_px`` wide with this part's own variation."""
    d = size_px * (1.0 + rng.uniform(-0.06, 0.06)) * _SS
    angle = rng.uniform(-8.0, 8.0)
    tint = np.asarray(_BASE_BGR[kind], np.float32) * np.float32(1.0 + rng.uniform(-0.05, 0.05))
    tint = tint * (1.0 + rng.uniform(-0.015, 0.015, 3)).astype(np.float32)
    side = math.ceil(d * 1.5) + 4 * _SS
    if kind == "chip":
        bgr, alpha = _chip(rng, d, side, tint)
    else:
        draw = {"washer": _washer, "bracket": _bracket, "gear": _gear}[kind]
        shade, alpha = draw(rng, d, side)
        bgr = shade[..., None] * tint
    # rotate premultiplied colour so the edges do not pick up the black outside
    rot = cv2.getRotationMatrix2D(((side - 1) / 2.0, (side - 1) / 2.0), angle, 1.0)
    pm = cv2.warpAffine(_f32(bgr * alpha[..., None]), rot, (side, side), flags=cv2.INTER_LINEAR)
    rotated = cv2.warpAffine(_f32(alpha), rot, (side, side), flags=cv2.INTER_LINEAR)
    out = side // _SS
    pm = cv2.resize(pm, (out, out), interpolation=cv2.INTER_AREA)
    alpha = _f32(np.clip(cv2.resize(rotated, (out, out), interpolation=cv2.INTER_AREA), 0.0, 1.0))
    alpha[alpha < 0.01] = 0.0
    ys, xs = np.nonzero(alpha)
    y1, y2, x1, x2 = max(ys.min() - 1, 0), ys.max() + 2, max(xs.min() - 1, 0), xs.max() + 2
    alpha = _f32(alpha[y1:y2, x1:x2])
    colour = pm[y1:y2, x1:x2] / np.maximum(alpha, 1e-3)[..., None]
    colour = np.clip(colour, 0.0, 255.0)
    return PartSprite(_f32(colour), alpha, np.zeros(alpha.shape, bool))


# ---------------------------------------------------------------------------------------------- defects


def _luma(s: PartSprite) -> float:
    solid = s.alpha > _ALPHA_SOLID
    return float((s.bgr[solid] @ np.array([0.114, 0.587, 0.299], np.float32)).mean())


def _pick(dt: FloatArray, min_d: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random point at least ``min_d`` from the part's edge (or the deepest points when none is)."""
    ys, xs = np.nonzero(dt >= min_d)
    if len(ys) == 0:
        ys, xs = np.nonzero(dt >= 0.85 * float(dt.max()))
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def _depth(alpha: FloatArray) -> FloatArray:
    solid = (alpha > 0.9).astype(np.uint8)
    return _f32(cv2.distanceTransform(solid, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))


def _scratch(s: PartSprite, rng: np.random.Generator, scale: float) -> PartSprite:
    h, w = s.alpha.shape
    dt = _depth(s.alpha)
    lines = np.zeros((h, w), np.float32)
    size = max(h, w)
    for i in range(int(rng.integers(1, 3))):
        cx, cy = _pick(dt, 3.0 * scale, rng)
        ang = rng.uniform(0, math.pi)
        half = rng.uniform(0.22, 0.36) * size
        ux, uy = math.cos(ang), math.sin(ang)
        bend = rng.uniform(-2.0, 2.0) * scale
        pts = np.array([(cx - ux * half, cy - uy * half), (cx - uy * bend, cy + ux * bend),
                        (cx + ux * half, cy + uy * half)])
        thickness = 2 if i == 0 else 1
        cv2.polylines(lines, [np.round(pts * 16).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA,
                      shift=4)
    lines = np.clip(lines, 0.0, 1.0) * (s.alpha > _ALPHA_SOLID)
    if _luma(s) > 110 and rng.uniform() < 0.6:
        target = s.bgr * np.float32(0.3)  # dark groove
    elif _luma(s) > 110:
        target = np.minimum(s.bgr + np.float32(80.0), 255.0)  # bright, freshly exposed metal
    else:
        target = np.broadcast_to(np.array([165.0, 168.0, 172.0], np.float32), s.bgr.shape)
    m = lines[..., None]
    bgr = s.bgr * (1.0 - m) + target * m
    return PartSprite(_f32(bgr), s.alpha, lines > 0.25)


def _hole(s: PartSprite, rng: np.random.Generator, scale: float) -> PartSprite:
    h, w = s.alpha.shape
    dt = _depth(s.alpha)
    radius = rng.uniform(4.0, 8.0) * scale
    radius = max(3.0 * scale, min(radius, float(dt.max()) - 2.5 * scale))
    cx, cy = _pick(dt, radius + 2.5 * scale, rng)
    yy, xx = np.mgrid[0:h, 0:w]
    r = _f32(np.hypot(xx - cx, yy - cy))
    disk = _soft(radius - r)
    if _luma(s) > 110:
        rim_w, rim_bgr = 1.5 * scale, s.bgr * np.float32(0.5)  # shadowed chamfer of a punched hole
    else:  # a broken-through package: the epoxy around the hole cracks white
        rim_w = 2.5 * scale
        rim_bgr = np.broadcast_to(np.array([128.0, 128.0, 134.0], np.float32), s.bgr.shape)
    rim = _f32(np.clip(1.0 - np.abs(r - radius - rim_w / 2) / rim_w, 0.0, 1.0)) * (1.0 - disk)
    m = rim[..., None]
    bgr = s.bgr * (1.0 - m) + rim_bgr * m
    alpha = s.alpha * (1.0 - disk)
    changed = ((disk > 0.25) | (rim > 0.25)) & (s.alpha > _ALPHA_SOLID)
    return PartSprite(_f32(bgr), _f32(alpha), changed)


_STAIN_BGR = {
    "washer": ((38.0, 72.0, 140.0), (22.0, 25.0, 28.0)),  # rust, oil
    "bracket": ((38.0, 72.0, 140.0), (22.0, 25.0, 28.0)),
    "gear": ((118.0, 138.0, 62.0), (20.0, 23.0, 26.0)),  # verdigris, oil
    "chip": ((168.0, 196.0, 204.0), (150.0, 160.0, 170.0)),  # flux residue, dried coolant
}


def _stain(s: PartSprite, kind: str, rng: np.random.Generator, scale: float) -> PartSprite:
    h, w = s.alpha.shape
    dt = _depth(s.alpha)
    radius = rng.uniform(6.0, 12.0) * scale
    cx, cy = _pick(dt, 0.5 * radius, rng)
    yy, xx = np.mgrid[0:h, 0:w]
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    th = np.arctan2(dy, dx)
    wobble = sum(a * np.sin(k * th + rng.uniform(0, 6.3)) for k, a in ((2, 0.1), (3, 0.09), (5, 0.05)))
    edge = radius * (1.0 + wobble)
    cover = np.clip((edge - r) / (0.35 * radius), 0.0, 1.0)
    mottle = 0.8 + 0.2 * np.clip(_smooth_noise(rng, (h, w), 1.5 * scale, 1.5 * scale), -1.5, 1.5) / 1.5
    a = _f32(0.88 * cover * mottle * (s.alpha > _ALPHA_SOLID))
    colour = np.asarray(_STAIN_BGR[kind][int(rng.integers(2))], np.float32)
    # keep a little of the part's shading so the stain sits on the surface
    shading = np.clip(s.bgr.mean(axis=2, keepdims=True) / max(_luma(s), 1.0), 0.7, 1.3) ** 0.5
    m = a[..., None]
    bgr = s.bgr * (1.0 - m) + colour * shading * m
    return PartSprite(_f32(bgr), s.alpha, a > 0.2)


def _missing(s: PartSprite, rng: np.random.Generator, scale: float) -> PartSprite:
    h, w = s.alpha.shape
    frac = rng.uniform(0.15, 0.25)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    proj = proj + 1.6 * scale * _smooth_noise(rng, (h, w), 2.5 * scale, 2.5 * scale)  # ragged break
    solid = s.alpha > _ALPHA_SOLID
    cut_at = float(np.quantile(proj[solid], 1.0 - frac))
    cut = _soft(_f32(proj - cut_at))
    face = _f32(np.clip(1.0 - np.abs(cut_at - proj - 1.2) / 1.2, 0.0, 1.0)) * (1.0 - cut)
    if _luma(s) > 110:
        face_bgr = s.bgr * np.float32(0.55)
    else:
        face_bgr = np.broadcast_to(np.array([105.0, 105.0, 110.0], np.float32), s.bgr.shape)
    m = face[..., None]
    bgr = s.bgr * (1.0 - m) + face_bgr * m
    alpha = s.alpha * (1.0 - cut)
    changed = solid & ((cut > 0.5) | (face > 0.3))
    return PartSprite(_f32(bgr), _f32(alpha), changed)


def render_part(kind: str, defect: str | None, seed: int,
                scale: float = 1.0) -> tuple[PartSprite, PartSprite]:
    """Draw one part: ``(good, as_shipped)``.

    ``good`` is the part without its defect, ``as_shipped`` the same part with ``defect`` applied (the same
    object as ``good`` when ``defect`` is None). The same ``seed`` always gives the same part; ``scale``
    multiplies every size (1.0 = a 360-row frame, parts about 60-90 px).
    """
    if kind not in KINDS:
        raise ValueError(f"render_part: kind must be one of {KINDS}, got {kind!r}")
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"render_part: defect must be None or one of {DEFECTS}, got {defect!r}")
    good = _draw_good(kind, np.random.default_rng([seed, 1]), _BASE_SIZE[kind] * scale)
    return good, _with_defect(good, kind, defect, seed, scale)


def _with_defect(good: PartSprite, kind: str, defect: str | None, seed: int, scale: float) -> PartSprite:
    if defect is None:
        return good
    rng = np.random.default_rng([seed, 2])
    if defect == "scratch":
        return _scratch(good, rng, scale)
    if defect == "hole":
        return _hole(good, rng, scale)
    if defect == "stain":
        return _stain(good, kind, rng, scale)
    return _missing(good, rng, scale)


# ---------------------------------------------------------------------------------------------- scene


def _background(width: int, height: int, rng: np.random.Generator,
                scale: float) -> tuple[FloatArray, int, int]:
    """Static image of the empty line: ``(bgr, belt_top, belt_bottom)``."""
    img = np.zeros((height, width, 3), np.float32)
    top, bottom = round(0.12 * height), round(0.88 * height)
    rail = max(4, round(0.045 * height))
    # painted machine frame
    frame_bgr = np.array([74.0, 68.0, 60.0], np.float32)
    frame_shade = 1.0 + 0.04 * _smooth_noise(rng, (height, width), 6.0, 6.0)
    img[:] = frame_bgr * frame_shade[..., None]
    for y0, y1 in ((0, top - rail), (bottom + rail, height)):
        if y1 - y0 > 6:
            for x in range(int(rng.integers(20, 60)), width, round(120 * scale)):
                cy = (y0 + y1) // 2
                cv2.rectangle(img, (x, cy - 2), (x + round(22 * scale), cy + 2), (40.0, 37.0, 33.0), -1,
                              cv2.LINE_AA)
    # rails: brushed aluminium, rounded profile, bolts
    ry = np.arange(rail, dtype=np.float32)
    profile = 0.78 + 0.3 * np.sin(np.pi * (ry + 0.5) / rail) ** 0.6
    for y0, flip in ((top - rail, False), (bottom, True)):
        p = profile[::-1] if flip else profile
        brushed = 1.0 + 0.04 * _smooth_noise(rng, (rail, width), 20.0, 0.5)
        img[y0:y0 + rail] = np.array([168.0, 170.0, 171.0], np.float32) * (p[:, None] * brushed)[..., None]
        for x in range(int(rng.integers(30, 70)), width, round(96 * scale)):
            cy = y0 + rail // 2
            rad = max(2, round(rail * 0.28))
            cv2.circle(img, (x, cy), rad + 1, (70.0, 70.0, 72.0), -1, cv2.LINE_AA)
            cv2.circle(img, (x, cy), rad, (135.0, 136.0, 138.0), -1, cv2.LINE_AA)
            cv2.circle(img, (x - 1, cy - 1), max(1, rad // 2), (200.0, 201.0, 203.0), -1, cv2.LINE_AA)
    # belt: rubber with fine grain, mottling and wear streaks along the motion (invariant to the motion)
    bh = bottom - top
    grain = _smooth_noise(rng, (bh, width), 0.6, 0.6)
    streaks = _smooth_noise(rng, (bh, width), 60.0 * scale, 0.7)
    mottle = _smooth_noise(rng, (bh, width), 14.0 * scale, 14.0 * scale)
    belt = 1.0 + 0.05 * grain + 0.045 * streaks + 0.03 * mottle
    yb = np.arange(bh, dtype=np.float32)
    rail_shadow = 1.0 - 0.35 * np.exp(-yb / (4.0 * scale)) - 0.2 * np.exp(-(bh - 1 - yb) / (3.0 * scale))
    img[top:bottom] = np.array(_BELT_BGR, np.float32) * (belt * rail_shadow[:, None])[..., None]
    # lens vignetting
    yy, xx = np.mgrid[0:height, 0:width]
    rr = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    img *= (1.0 - 0.1 * rr / 2)[..., None].astype(np.float32)
    return _f32(np.clip(img, 0, 255)), top, bottom


@dataclass(frozen=True)
class _Placed:
    """A part on the belt: sprite layers ready to blend and its position (top-left) at frame 0."""

    truth: PartTruth
    x0: float
    y0: int
    good: PartSprite
    shipped: PartSprite
    premul: FloatArray  # (h, w, 3) shipped colour * alpha
    keep: FloatArray  # (h, w, 1) 1 - alpha
    shade: FloatArray  # (hs, ws, 1) multiplier of the belt under the shadow
    shade_dx: int  # shadow layer top-left relative to the sprite's
    shade_dy: int
    solid: BoolArray  # (h, w) alpha > 0.5
    col_cumsum: npt.NDArray[np.int64]  # (w + 1,) cumulative solid pixels per column


def _fraction_inside(col_cumsum: npt.NDArray[np.int64], left: npt.NDArray[np.int64],
                     width: int) -> FloatArray:
    """Fraction of a sprite's solid area inside ``[0, width)`` for each sprite left edge in ``left``."""
    w = len(col_cumsum) - 1
    lo = np.clip(-left, 0, w)
    hi = np.clip(width - left, 0, w)
    return _f32((col_cumsum[hi] - col_cumsum[lo]) / max(int(col_cumsum[-1]), 1))


class ProductionLineScene:
    """A deterministic synthetic conveyor-belt video with per-part ground truth.

    Iterating yields :class:`~pipeline.types.Frame` records (``timestamp = index / fps``, BGR uint8 images
    of ``cfg.height x cfg.width``). All planning happens here in the constructor; frames are rendered on
    demand, a few milliseconds each for 640x360.
    """

    def __init__(self, cfg: SceneConfig | None = None) -> None:
        self.cfg = cfg = cfg if cfg is not None else SceneConfig()
        self._scale = float(np.clip(cfg.height / _REF_HEIGHT, 0.4, 3.0))
        ss = np.random.SeedSequence([cfg.seed, 0x5CE7E])
        rng_bg, rng_plan, rng_defect, rng_frames = (np.random.default_rng(s) for s in ss.spawn(4))
        self._bg, self.belt_top, self.belt_bottom = _background(cfg.width, cfg.height, rng_bg, self._scale)
        self._placed = self._plan(rng_plan, rng_defect)
        n = cfg.num_frames
        t = np.arange(n, dtype=np.float64) / cfg.fps
        # mains-beat flicker plus jitter: always within +-2 %
        self._gain = _f32(1.0 + 0.011 * np.sin(2 * math.pi * 0.9 * t + rng_frames.uniform(0, 6.3))
                          + 0.005 * np.sin(2 * math.pi * 3.7 * t + rng_frames.uniform(0, 6.3))
                          + rng_frames.uniform(-0.003, 0.003, n))
        pad = 96
        self._noise = rng_frames.standard_normal((cfg.height + pad, cfg.width + pad, 3), dtype=np.float32)
        self._noise *= np.float32(2.0)
        self._noise += np.float32(0.5)  # rounding offset for the uint8 conversion
        self._noise_at = rng_frames.integers(0, pad + 1, size=(n, 2))

    # -------------------------------------------------------------------------------------- planning

    def _plan(self, rng: np.random.Generator, rng_defect: np.random.Generator) -> list[_Placed]:
        cfg, s = self.cfg, self._scale
        width, n = cfg.width, cfg.num_frames
        gap_min, gap_extra = 30.0 * s, 150.0 * s
        clear_y, jitter = 18.0 * s, 5.0 * s
        bh = self.belt_bottom - self.belt_top
        lane_y = [self.belt_top + bh * f for f in ((0.5,) if cfg.lanes == 1 else (0.27, 0.73))]
        # ``frontier``: how far right the next part of a lane may reach (its right edge at frame 0, plus
        # the gap); on an empty belt the first part of one lane arrives within the first frames
        if cfg.prefill:
            frontier = [width + rng.uniform(0.0, 0.6 * gap_extra) for _ in lane_y]
        else:
            frontier = [gap_min - rng.uniform(0.0, 1.0) * gap_extra for _ in lane_y]
            frontier[int(rng.integers(len(lane_y)))] = gap_min - rng.uniform(5.0, 20.0) * cfg.speed_px
        first = [True for _ in lane_y]
        travel = cfg.speed_px * max(n - 1, 0)
        kinds: list[str] = []
        cands: list[tuple[str, int, PartSprite, float, int]] = []  # kind, seed, sprite, x0, y0
        boxes: list[tuple[int, float, float, float, float]] = []  # lane, x1, y1, x2, y2 at frame 0
        while True:
            lane = int(np.argmax(frontier))
            if frontier[lane] <= -travel:
                break
            if not kinds:
                kinds = list(rng.permutation(np.array(cfg.kinds)))
            kind = str(kinds.pop())
            seed = int(rng.integers(2**62))
            sprite, _ = render_part(kind, None, seed, s)
            bx1, by1, bx2, by2 = sprite.box
            right = frontier[lane] - gap_min - (0.0 if first[lane] else rng.gamma(2.0, gap_extra / 2.0))
            first[lane] = False
            y0 = round(lane_y[lane] + rng.uniform(-jitter, jitter) - (by1 + by2) / 2.0)
            y0 = int(np.clip(y0, self.belt_top + 2 - by1, self.belt_bottom - 2 - by2))
            moved = True
            while moved:  # keep clear of parts in the other lane
                moved = False
                for ln, ox1, oy1, ox2, oy2 in boxes:
                    near_y = min(oy2, y0 + by2) - max(oy1, y0 + by1) > -clear_y
                    near_x = min(ox2, right) - max(ox1, right - (bx2 - bx1)) > -gap_min
                    if ln != lane and near_y and near_x:
                        right, moved = ox1 - gap_min, True
            x0 = right - bx2
            frontier[lane] = x0 + bx1
            boxes.append((lane, x0 + bx1, float(y0 + by1), right, float(y0 + by2)))
            cands.append((kind, seed, sprite, x0, y0))

        frames = np.arange(n, dtype=np.float64)
        kept: list[tuple[int, float, str, int, PartSprite, float, int, bool]] = []
        for kind, seed, sprite, x0, y0 in cands:
            frac = _fraction_inside(self._col_cumsum(sprite), self._left(x0, frames), width)
            inside = np.nonzero(frac >= 0.5)[0]
            if len(inside):
                kept.append((int(inside[0]), float(y0), kind, seed, sprite, x0, y0, bool(frac.max() >= 1.0)))
        kept.sort(key=lambda k: (k[0], k[1]))

        # defects: only on parts seen whole at some frame, types taken in turn so every type appears
        count = math.ceil(cfg.defect_rate * len(kept) - 1e-9)
        whole = [i for i, k in enumerate(kept) if k[7]]
        chosen = [int(i) for i in rng_defect.permutation(np.array(whole, dtype=np.int64))[:count]]
        order = [str(d) for d in rng_defect.permutation(np.array(cfg.defects))] if cfg.defects else []
        defect_of = {i: order[j % len(order)] for j, i in enumerate(chosen)}

        placed = []
        for idx, (_, _, kind, seed, good, x0, y0, _) in enumerate(kept):
            defect = defect_of.get(idx)
            shipped = _with_defect(good, kind, defect, seed, s)
            cums = self._col_cumsum(shipped)
            frac = _fraction_inside(cums, self._left(x0, frames), width)
            inside = np.nonzero(frac >= 0.5)[0]
            truth = PartTruth(idx + 1, kind, defect, int(inside[0]), int(inside[-1]))
            placed.append(self._layers(truth, x0, y0, good, shipped, cums))
        return placed

    def _layers(self, truth: PartTruth, x0: float, y0: int, good: PartSprite, shipped: PartSprite,
                cums: npt.NDArray[np.int64]) -> _Placed:
        s = self._scale
        pad = max(2, round(8 * s))
        a = cv2.copyMakeBorder(shipped.alpha, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)
        shadow = cv2.GaussianBlur(a, (0, 0), 2.6 * s)
        return _Placed(
            truth=truth, x0=x0, y0=y0, good=good, shipped=shipped,
            premul=_f32(shipped.bgr * shipped.alpha[..., None]),
            keep=_f32(1.0 - shipped.alpha)[..., None],
            shade=_f32(1.0 - 0.5 * shadow)[..., None],
            shade_dx=round(3 * s) - pad, shade_dy=round(5 * s) - pad,
            solid=shipped.alpha > _ALPHA_SOLID, col_cumsum=cums,
        )

    @staticmethod
    def _col_cumsum(sprite: PartSprite) -> npt.NDArray[np.int64]:
        cols = (sprite.alpha > _ALPHA_SOLID).sum(axis=0)
        return np.concatenate([[0], np.cumsum(cols)]).astype(np.int64)

    def _left(self, x0: float, frames: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Sprite left edge (integer image column) at each frame."""
        return np.floor(x0 + self.cfg.speed_px * frames + 0.5).astype(np.int64)

    def _x_at(self, p: _Placed, index: int) -> int:
        return math.floor(p.x0 + self.cfg.speed_px * index + 0.5)

    # -------------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return self.cfg.num_frames

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.cfg.num_frames):
            yield self.render(i)

    @property
    def parts(self) -> list[PartTruth]:
        """Every part that appears (at least half inside the image at some frame), by ``part_id``."""
        return [p.truth for p in self._placed]

    def sprite(self, part_id: int, with_defect: bool = True) -> PartSprite:
        """The part as shipped (``with_defect``) or as it would look without its defect."""
        p = self._part(part_id)
        return p.shipped if with_defect else p.good

    def _part(self, part_id: int) -> _Placed:
        if not 1 <= part_id <= len(self._placed):
            raise KeyError(f"no part {part_id}: ids are 1..{len(self._placed)}")
        return self._placed[part_id - 1]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.cfg.num_frames:
            raise IndexError(f"frame index must be within 0..{self.cfg.num_frames - 1}, got {index}")

    def render(self, index: int) -> Frame:
        """Frame ``index`` (0-based) of the scene."""
        self._check_index(index)
        cfg = self.cfg
        canvas = self._bg.copy()
        on = []
        for p in self._placed:
            x, y = self._x_at(p, index), p.y0
            w = p.keep.shape[1]
            if x + w + 16 > 0 and x - 16 < cfg.width:
                on.append((p, x, y))
        for p, x, y in on:
            _blend(canvas, x + p.shade_dx, y + p.shade_dy, p.shade, None)
        for p, x, y in on:
            _blend(canvas, x, y, p.keep, p.premul)
        canvas *= self._gain[index]
        ny, nx = self._noise_at[index]
        canvas += self._noise[ny:ny + cfg.height, nx:nx + cfg.width]
        np.clip(canvas, 0.0, 255.0, out=canvas)
        return Frame(index=index, timestamp=index / cfg.fps, image=canvas.astype(np.uint8))

    def boxes_at(self, frame_index: int, min_visible: float = 0.0) -> list[tuple[int, FloatArray]]:
        """``(part_id, xyxy)`` of the visible part of every part in the frame.

        ``xyxy`` is a float32 ``(4,)`` box of the part's solid pixels that are inside the image (so always
        within ``[0, width] x [0, height]``). Parts with less than ``min_visible`` of their area inside, or
        none at all, are left out.
        """
        self._check_index(frame_index)
        out = []
        width = self.cfg.width
        for p in self._placed:
            x = self._x_at(p, frame_index)
            w = p.solid.shape[1]
            lo, hi = min(max(-x, 0), w), min(max(width - x, 0), w)
            visible = int(p.col_cumsum[hi] - p.col_cumsum[lo])
            if visible == 0 or visible < min_visible * int(p.col_cumsum[-1]):
                continue
            cols = np.nonzero(p.solid[:, lo:hi].any(axis=0))[0]
            rows = np.nonzero(p.solid[:, lo:hi].any(axis=1))[0]
            box = np.array([x + lo + cols[0], p.y0 + rows[0], x + lo + cols[-1] + 1, p.y0 + rows[-1] + 1],
                           np.float32)
            out.append((p.truth.part_id, box))
        return out

    def part_at(self, frame_index: int, xyxy: npt.ArrayLike, min_iou: float = 0.3) -> int | None:
        """The id of the part whose true box overlaps ``xyxy`` best, if that IoU is at least ``min_iou``."""
        box = _f32(xyxy).reshape(4)
        best, best_iou = None, min_iou
        for part_id, true_box in self.boxes_at(frame_index):
            iou = float(iou_matrix(box[None], true_box[None])[0, 0])
            if iou > 0.0 and iou >= best_iou:
                best, best_iou = part_id, iou
        return best


def _blend(canvas: FloatArray, x: int, y: int, keep: FloatArray, add: FloatArray | None) -> None:
    """``canvas = canvas * keep + add`` over the layer's rectangle at (x, y), clipped to the canvas."""
    h, w = keep.shape[:2]
    x1, y1 = max(x, 0), max(y, 0)
    x2, y2 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 >= x2 or y1 >= y2:
        return
    roi = canvas[y1:y2, x1:x2]
    sl = (slice(y1 - y, y2 - y), slice(x1 - x, x2 - x))
    roi *= keep[sl]
    if add is not None:
        roi += add[sl]
