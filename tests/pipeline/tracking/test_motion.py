from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import TrackerConfig
from pipeline.tracking.motion import CameraMotion, feature_mask, identity_warp, upscale_warp
from pipeline.tracking.tracker import Tracker
from pipeline.types import Detections, Embeddings


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """A 240 x 320 BGR random-noise image, blurred a little so corners and gradients are trackable."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (0, 0), 1.5)


def moved(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The image seen after the camera moved: a point p of ``image`` is at ``affine @ [p, 1]``."""
    return cv2.warpAffine(image, affine, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


TRANSLATION = np.array([[1.0, 0.0, 7.5], [0.0, 1.0, -4.25]])
ROTATION = cv2.getRotationMatrix2D((160.0, 120.0), 3.0, 1.0) + np.array([[0, 0, 4.0], [0, 0, 2.0]])
SIMILARITY = cv2.getRotationMatrix2D((160.0, 120.0), -2.0, 1.03) + np.array([[0, 0, 5.0], [0, 0, 3.0]])


@pytest.mark.parametrize(
    ("method", "downscale", "affine", "tol"),
    [
        ("sparse", 1.0, TRANSLATION, 0.1),
        ("sparse", 2.0, TRANSLATION, 0.3),
        ("sparse", 1.0, SIMILARITY, 0.1),
        ("sparse", 2.0, SIMILARITY, 0.3),
        ("ecc", 1.0, TRANSLATION, 0.1),
        ("ecc", 2.0, ROTATION, 0.2),  # ECC fits rotation + translation only
    ],
)
def test_recovers_a_known_camera_motion(texture: np.ndarray, method: str, downscale: float,
                                        affine: np.ndarray, tol: float) -> None:
    cmc = CameraMotion(method, downscale)
    np.testing.assert_array_equal(cmc.estimate(texture), identity_warp())  # first frame: nothing to compare
    warp = cmc.estimate(moved(texture, affine))
    assert warp.shape == (2, 3)
    # compare where the warps send the image corners, in pixels
    corners = np.array([[0, 0, 1], [319, 0, 1], [0, 239, 1], [319, 239, 1]], np.float64)
    np.testing.assert_allclose(corners @ warp.T, corners @ affine.T, atol=tol * 3)
    np.testing.assert_allclose(warp[:, 2], affine[:, 2], atol=max(tol * 3, 1.0))


def test_still_camera_and_failures_give_identity(texture: np.ndarray) -> None:
    cmc = CameraMotion("sparse")
    cmc.estimate(texture)
    np.testing.assert_allclose(cmc.estimate(texture), identity_warp(), atol=1e-3)
    flat = np.full_like(texture, 128)  # nothing to track
    cmc.reset()
    cmc.estimate(flat)
    np.testing.assert_array_equal(cmc.estimate(flat), identity_warp())
    cmc.estimate(texture[:100])  # a size change restarts
    np.testing.assert_array_equal(CameraMotion("none").estimate(texture), identity_warp())


def test_moving_objects_do_not_pull_the_estimate(texture: np.ndarray) -> None:
    # The camera is still, but a big textured object moves 12 px; its box is left out of the corners.
    prev, cur = texture.copy(), texture.copy()
    patch = np.random.default_rng(5).integers(0, 256, (120, 140, 3), dtype=np.uint8)
    prev[60:180, 60:200] = patch
    cur[60:180, 72:212] = patch
    cmc = CameraMotion("sparse", 1.0)
    cmc.estimate(prev, exclude_xyxy=[[55, 55, 205, 185]])
    warp = cmc.estimate(cur, exclude_xyxy=[[67, 55, 217, 185]])
    np.testing.assert_allclose(warp, identity_warp(), atol=0.5)


def test_feature_mask_and_upscale() -> None:
    mask = feature_mask((100, 200), [[20, 10, 60, 50]], scale=2.0, border=0.1)
    assert mask[:10].max() == 0 and mask[:, :20].max() == 0  # borders
    assert mask[5:25, 10:30][5:, 10:].max() == 0 and mask[50, 100] == 255  # the box, halved
    np.testing.assert_allclose(upscale_warp(np.array([[1, 0, 3.0], [0, 1, -2.0]]), 4.0), [[1, 0, 12], [0, 1, -8]])


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="none, sparse, ecc"):
        CameraMotion("orb")
    with pytest.raises(ValueError, match="downscale"):
        CameraMotion("sparse", 0.5)


def test_tracker_compensates_a_camera_jump(texture: np.ndarray) -> None:
    """A still object; the camera jumps 24 px between two frames. Its box jumps too: without compensation
    the prediction no longer overlaps it and the track is lost; with it, the id is kept."""
    def run(cmc: str) -> list[int]:
        t = Tracker(TrackerConfig(cmc=cmc, cmc_downscale=2.0, min_hits=1, reid_max_cosine_distance=0.0))
        ids = []
        shift = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        for i in range(10):
            if i == 5:
                shift = np.array([[1.0, 0.0, 24.0], [0.0, 1.0, 0.0]])
            x = 100.0 + shift[0, 2]
            dets = Detections(np.array([[x, 100, x + 16, 132]], np.float32), np.ones(1), -np.ones(1))
            out = t.update(dets, Embeddings(np.array([[1.0, 0.0]], np.float32)), i / 10,
                           frame_image=moved(texture, shift))
            ids.append(next(o.track_id for o in out.observations if o.detection_index == 0))
        return ids

    assert run("sparse") == [1] * 10
    assert run("none") == [1] * 5 + [2] * 5
