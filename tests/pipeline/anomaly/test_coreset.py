from __future__ import annotations

import numpy as np
import pytest

from pipeline.anomaly.coreset import greedy_coreset


def test_greedy_picks_farthest_points_by_hand() -> None:
    # Points on a line: 0, 1, 2, 10. Start forced by seed; the second pick is always the farthest.
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    for seed in range(4):
        picks, coverage = greedy_coreset(x, 2, seed)
        assert len(set(picks.tolist())) == 2
        d = np.abs(x[:, None, 0] - x[picks][None, :, 0]).min(1)
        assert coverage == pytest.approx(d.max())
    picks, coverage = greedy_coreset(x, 4)
    assert sorted(picks.tolist()) == [0, 1, 2, 3] and coverage == 0.0


def test_coverage_beats_random_subsample() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (950, 8)), rng.normal(5, 0.1, (50, 8))]).astype(np.float32)
    picks, coverage = greedy_coreset(x, 20)
    rand = x[rng.choice(len(x), 20, replace=False)]
    rand_cov = np.sqrt(((x[:, None] - rand[None]) ** 2).sum(-1)).min(1).max()
    # k-center reaches the rare far cluster; a random subsample of 20 usually misses it (5% of points).
    assert (x[picks][:, 0] > 2.5).any()
    assert coverage < 1.0
    assert coverage <= rand_cov


def test_chunked_coreset_keeps_the_fraction_and_covers_every_row() -> None:
    from pipeline.anomaly.coreset import chunked_greedy_coreset

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2500, 6)).astype(np.float32)
    picks, coverage = chunked_greedy_coreset(x, 0.04, seed=1, chunk_rows=1000)  # chunks of 1000, 1000, 500
    assert len(picks) == 40 + 40 + 20 and len(np.unique(picks)) == len(picks)
    nearest = np.sqrt(((x[:, None] - x[picks][None]) ** 2).sum(-1)).min(1)
    assert nearest.max() <= coverage + 1e-4  # the stated radius holds for all 2500 rows
    assert nearest.max() > 0.8 * coverage  # and is not a loose bound
    _, whole_cov = greedy_coreset(x, len(picks), seed=1)
    assert coverage < 2.0 * whole_cov  # chunking costs some coverage, not an order of magnitude
    assert chunked_greedy_coreset(x, 1.0)[1] == 0.0
    with pytest.raises(ValueError, match="fraction"):
        chunked_greedy_coreset(x, 0.0)
