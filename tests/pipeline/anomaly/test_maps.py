from __future__ import annotations

import numpy as np
import pytest

from pipeline.anomaly.maps import anomaly_maps, map_scores, overlay, smoothed_grid_max


def test_one_hot_cell_lands_where_it_belongs() -> None:
    grid = np.zeros((1, 4, 3), np.float32)
    grid[0, 1, 2] = 1.0  # row 1 of 4, column 2 of 3
    m = anomaly_maps(grid, (40, 30), sigma_px=2.0)
    assert m.shape == (1, 40, 30) and m.dtype == np.float32
    y, x = np.unravel_index(np.argmax(m[0]), m[0].shape)
    assert 10 <= y < 20 and 20 <= x < 30
    raw = anomaly_maps(grid, (40, 30), sigma_px=0.0)
    assert map_scores(raw)[0] == pytest.approx(1.0, abs=0.06)  # bilinear samples between cell centres
    assert map_scores(m)[0] < 1.0  # smoothing spreads an isolated cell


def test_smoothing_favours_clusters_over_isolated_cells() -> None:
    grid = np.zeros((2, 8, 8), np.float32)
    grid[0, 4, 4] = 1.0  # one isolated cell
    grid[1, 3:6, 3:6] = 0.8  # a 3x3 blob, each cell lower
    raw = smoothed_grid_max(grid, 0.0)
    assert raw[0] > raw[1]
    smooth = smoothed_grid_max(grid, 1.0)
    assert smooth[1] > smooth[0]
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        anomaly_maps(np.zeros((4, 4)), (8, 8))


def test_overlay_colours_only_above_low() -> None:
    img = np.full((10, 10, 3), 100, np.uint8)
    amap = np.zeros((10, 10), np.float32)
    amap[:5] = 2.0
    out = overlay(img, amap, low=1.0, high=2.0)
    assert (out[5:] == 100).all()  # below ``low``: untouched
    assert not (out[:5] == 100).all()
    assert out[0, 0, 2] > out[0, 0, 0]  # at ``high``: red (BGR) dominates


def test_border_band_is_left_out_of_the_maximum() -> None:
    from pipeline.anomaly.maps import mask_border

    m = np.ones((2, 20, 30), np.float32)
    m[0, 0, 0] = 9.0  # corner artefact
    m[1, 10, 15] = 5.0  # a defect inside
    out = mask_border(m, 3)
    assert map_scores(out).tolist() == [1.0, 5.0]
    assert out[0, 0, 0] == 1.0 and out[0, 3:-3, 3:-3].min() == 1.0
    assert m[0, 0, 0] == 9.0  # the input is not modified
    np.testing.assert_array_equal(mask_border(m, 0), m)
    with pytest.raises(ValueError, match="leaves nothing"):
        mask_border(m, 10)


def test_patch_maps_colour_only_what_is_over_the_threshold_inside_the_frame() -> None:
    from pipeline.anomaly.maps import overlay_patch_maps
    from pipeline.types import PatchMap

    frame = np.full((60, 80, 3), 90, np.uint8)
    grid = np.ones((4, 4), np.float32)
    grid[0, 1] = 3.0  # top row, second of four columns (x 60..80 of the region 40..120): over the threshold of 2
    # The crop region runs past the right edge of the frame: what is outside is clipped, not an error.
    out = overlay_patch_maps(frame, [PatchMap(0, (40.0, 10.0, 120.0, 90.0), grid, 2.0)])
    assert (out[:10] == 90).all() and (out[:, :40] == 90).all()  # outside the region: untouched
    changed = np.argwhere((out != 90).any(axis=2))
    assert len(changed) and changed[:, 0].min() >= 10 and changed[:, 1].min() >= 40
    # Only around the hot patch (spread a little by interpolation) is coloured.
    assert changed[:, 0].max() < 10 + 40 and changed[:, 1].min() >= 40 + 10
    assert (overlay_patch_maps(frame, [PatchMap(0, (0.0, 0.0, 80.0, 60.0), np.ones((2, 2), np.float32), 2.0)])
            == frame).all()
    with pytest.raises(ValueError, match="grid shape"):
        PatchMap(0, (0.0, 0.0, 1.0, 1.0), np.zeros(3, np.float32), 1.0)
