"""What the tracker compares: the appearance vector of each detection (pure functions).

Crops are square and padded (:func:`pipeline.crops.square_boxes`), so that parts keep their aspect ratio. For an
object much taller than wide (a person: about 1 by 2.3) most of the crop is background and neighbours, and the
encoder's pooled embedding of the whole crop describes the scene more than the object: every person in one video
looks alike to it. ``region = "box"`` describes the object alone: the encoder's local features (its ``patches``
output, one vector per cell of a grid over the crop) averaged over the cells the detection box covers, each cell
weighted by the fraction of its area inside the box.

With a colour weight, each vector is joined with the colour histogram of its box (:mod:`pipeline.tracking.color`),
so the tracker's one cosine distance is a weighted sum of the embedding's and the colour's (:func:`with_color`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.tracking.color import color_histograms
from pipeline.tracking.matching import has_feature
from pipeline.types import Embeddings, FloatArray, UInt8Array

REGIONS = ("crop", "box")


class AppearanceError(ValueError):
    """The tracker's appearance cannot be computed with this encoder (a setting to change, named)."""


def check_region(region: str, grid: tuple[int, int], model: object = "") -> None:
    """Refuse, before any frame, a region the encoder cannot serve: ``"box"`` needs a patch output. ``model``
    names the encoder's model file in the message."""
    if region not in REGIONS:
        raise AppearanceError(f"[tracker] appearance_region must be one of {', '.join(REGIONS)}, got {region!r}")
    if region == "box" and (grid[0] < 1 or grid[1] < 1):
        which = f"the encoder {model}" if str(model) else "the encoder"
        raise AppearanceError(f'[tracker] appearance_region = "box" needs an encoder with a \'patches\' output, and '
                              f'{which} has none: set appearance_region = "crop", or use an encoder with one (the '
                              f"built-in encoder with [encoder] patch_stage > 0, or a model exported that way)")


def box_cell_weights(regions: npt.ArrayLike, boxes: npt.ArrayLike, grid: tuple[int, int]) -> FloatArray:
    """``(N, h * w)`` float32: the fraction of each grid cell's area inside the box, row-major over ``grid``.

    ``regions`` are the ``(N, 4)`` xyxy frame regions the crops were cut from (the grid spans each region),
    ``boxes`` the ``(N, 4)`` xyxy detection boxes. A box that covers no cell (outside its region) gets the
    weights of the whole region, so that every row has a positive sum.
    """
    h, w = grid
    if h < 1 or w < 1:
        raise ValueError(f"grid must be (h, w) >= (1, 1), got {grid}")
    reg = np.asarray(regions, np.float64).reshape(-1, 4)
    box = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(reg) != len(box):
        raise ValueError(f"{len(reg)} regions for {len(box)} boxes: one region per box")
    fx = np.linspace(0.0, 1.0, w + 1)
    fy = np.linspace(0.0, 1.0, h + 1)
    ex = reg[:, 0, None] + fx[None, :] * (reg[:, 2] - reg[:, 0])[:, None]  # (N, w + 1) cell edges
    ey = reg[:, 1, None] + fy[None, :] * (reg[:, 3] - reg[:, 1])[:, None]
    ox = np.clip(np.minimum(ex[:, 1:], box[:, 2, None]) - np.maximum(ex[:, :-1], box[:, 0, None]), 0.0, None)
    oy = np.clip(np.minimum(ey[:, 1:], box[:, 3, None]) - np.maximum(ey[:, :-1], box[:, 1, None]), 0.0, None)
    cell_w = np.maximum(np.diff(ex, axis=1), 1e-12)
    cell_h = np.maximum(np.diff(ey, axis=1), 1e-12)
    weights = (oy / cell_h)[:, :, None] * (ox / cell_w)[:, None, :]  # (N, h, w) in [0, 1]
    weights = weights.reshape(len(reg), h * w)
    empty = weights.sum(axis=1) <= 0
    weights[empty] = 1.0
    return weights.astype(np.float32)


def box_pooled(emb: Embeddings, regions: FloatArray, boxes: FloatArray,
               frame_size: tuple[int, int] | None = None) -> Embeddings:
    """The appearance of each box: ``emb``'s patch features weighted by :func:`box_cell_weights`, averaged and
    L2-normalised, as ``(N, C)`` vectors without patches. Rows of ``emb`` that are all zeros (crops not embedded)
    stay all zeros, so the tracker still treats them as not embedded.

    ``regions`` are the crops' frame regions (``CropBatch.xyxy``); the grid spans the whole pixels each crop was
    cut from (:func:`pipeline.crops.crop_batch` cuts from ``floor`` to ``ceil``). With ``frame_size`` ``(width,
    height)``, boxes are clipped to the frame first: the part of a crop beyond the frame edge is replicated
    border pixels, not the object.
    """
    if emb.patches is None:
        raise AppearanceError("box pooling needs the encoder's 'patches' output; this encoder has none")
    n = len(emb)
    if n == 0:
        return Embeddings(np.zeros((0, emb.patches.shape[2]), np.float32))
    reg = np.asarray(regions, np.float64).reshape(-1, 4)
    reg = np.concatenate([np.floor(reg[:, :2]), np.ceil(reg[:, 2:])], axis=1)
    box = np.asarray(boxes, np.float64).reshape(-1, 4)
    if frame_size is not None:
        width, height = frame_size
        box = np.clip(box, 0.0, np.array([width, height, width, height], np.float64))
    weights = box_cell_weights(reg, box, emb.grid)
    pooled = np.einsum("np,npc->nc", weights, emb.patches) / weights.sum(axis=1, keepdims=True)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    pooled = np.where(norm > 1e-12, pooled / np.maximum(norm, 1e-12), 0.0)
    pooled[~has_feature(emb.vectors)] = 0.0
    return Embeddings(pooled.astype(np.float32))


def with_color(emb: Embeddings, colors: FloatArray, weight: float) -> Embeddings:
    """Each row of ``emb`` joined with its colour descriptor (:mod:`pipeline.tracking.color`), so that the
    cosine distance the tracker computes is ``(1 - weight) * embedding distance + weight * colour distance``.

    Both parts are unit vectors, scaled by ``sqrt(1 - weight)`` and ``sqrt(weight)``: the joined vector has unit
    norm and its dot product is the weighted sum of the two cosines. A row without an embedding (all zeros)
    stays all zeros, so the tracker still treats it as not embedded; a row without colour (box outside the
    frame) keeps the embedding part only, which the tracker's normalisation turns into the embedding's own
    distance.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"color weight must be in [0, 1], got {weight}")
    vec = np.asarray(emb.vectors, np.float32)
    col = np.asarray(colors, np.float32)
    if col.ndim != 2 or len(col) != len(vec):
        raise ValueError(f"{len(vec)} embeddings but colour descriptors of shape {col.shape}: one row per embedding")
    known = has_feature(vec)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    unit = np.where(norm > 1e-12, vec / np.maximum(norm, 1e-12), 0.0)
    joined = np.concatenate([np.sqrt(1.0 - weight) * unit, np.sqrt(weight) * col], axis=1)
    joined[~known] = 0.0
    return Embeddings(joined.astype(np.float32))


def tracking_embeddings(emb: Embeddings, regions: FloatArray, boxes: FloatArray, region: str,
                        frame_size: tuple[int, int] | None = None, *, image: UInt8Array | None = None,
                        color_weight: float = 0.0) -> Embeddings:
    """The vectors the tracker compares: ``emb`` itself for ``region = "crop"``, :func:`box_pooled` for ``"box"``;
    with ``color_weight > 0``, joined with the boxes' colour in the BGR frame ``image`` (:func:`with_color`)."""
    if region == "crop":
        seen = emb
    elif region == "box":
        seen = box_pooled(emb, regions, boxes, frame_size)
    else:
        raise AppearanceError(f"appearance region must be one of {', '.join(REGIONS)}, got {region!r}")
    if color_weight <= 0.0:
        return seen
    if image is None:
        raise AppearanceError("[tracker] color_weight > 0 needs the frame image to measure the boxes' colour")
    return with_color(seen, color_histograms(image, boxes), color_weight)
