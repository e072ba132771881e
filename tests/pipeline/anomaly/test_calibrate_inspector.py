from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.anomaly.calibrate import (
    aggregate,
    false_alarm_upper_bound,
    group_folds,
    threshold_for_false_alarm_rate,
)
from pipeline.anomaly.inspector import PartInspector
from pipeline.types import Verdict


def test_folds_keep_groups_whole_and_cover_everything() -> None:
    groups = np.repeat(np.arange(8), 5)
    folds = group_folds(groups, 3)
    assert len(folds) == 3
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    sets = [set(groups[f].tolist()) for f in folds]
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1:])
    assert len(group_folds(np.repeat([0, 1], 3), 5)) == 2  # never more folds than groups
    with pytest.raises(ValueError, match="at least 2 groups"):
        group_folds(np.zeros(5), 3)


def test_threshold_quantile_by_hand() -> None:
    scores = np.arange(1, 101, dtype=float)  # 1..100
    assert threshold_for_false_alarm_rate(scores, 0.05) == 96.0
    assert threshold_for_false_alarm_rate(scores, 0.01) == 100.0
    with pytest.raises(ValueError, match="no held-out"):
        threshold_for_false_alarm_rate(np.array([]), 0.01)


def test_false_alarm_upper_bound() -> None:
    assert false_alarm_upper_bound(100) == pytest.approx(1 - 0.05 ** 0.01)  # ~3/n rule
    assert false_alarm_upper_bound(0) == 1.0
    assert 0.02 < false_alarm_upper_bound(100, exceed=1) < 0.06


def test_aggregate() -> None:
    assert aggregate([1, 5, 2], "median") == 2 and aggregate([1, 5], "mean") == 3 and aggregate([1, 5], "max") == 5
    assert math.isnan(aggregate([], "median"))
    with pytest.raises(ValueError, match="valid"):
        aggregate([1.0], "mode")


def test_inspector_one_flag_per_part() -> None:
    insp = PartInspector(threshold=0.5, min_frames=3, how="median")
    assert insp.observe(1, 0.9).verdict == Verdict.PENDING
    assert insp.observe(1, 0.9).verdict == Verdict.PENDING
    third = insp.observe(1, 0.1)  # median 0.9 > 0.5
    assert third.verdict == Verdict.DEFECT and third.newly_flagged and third.frames_scored == 3
    later = [insp.observe(1, 0.95) for _ in range(5)]
    assert all(u.verdict == Verdict.DEFECT and not u.newly_flagged for u in later)
    for s in (0.1, 0.2, 0.9):  # one outlier frame does not flag a good part
        good = insp.observe(2, s)
    assert good.verdict == Verdict.GOOD
    assert insp.end(1) == Verdict.DEFECT and insp.end(2) == Verdict.GOOD
    assert insp.current(1).verdict == Verdict.PENDING


def test_clear_scores_starts_parts_over_but_never_flags_twice() -> None:
    insp = PartInspector(threshold=0.5, min_frames=2)
    for _ in range(2):
        flagged = insp.observe(1, 0.9)
        insp.observe(2, 0.1)
    assert flagged.newly_flagged and insp.current(2).verdict == Verdict.GOOD
    insp.clear_scores()  # e.g. a bank swap into other score units
    assert insp.current(1).verdict == Verdict.DEFECT and insp.current(1).frames_scored == 0
    assert insp.current(2).verdict == Verdict.PENDING and math.isnan(insp.current(2).track_score)
    again = insp.observe(1, 7.0)
    assert again.verdict == Verdict.DEFECT and not again.newly_flagged and again.frames_scored == 1
    assert insp.observe(2, 0.2).verdict == Verdict.PENDING  # one new score: min_frames not reached
    assert insp.observe(2, 0.2).verdict == Verdict.GOOD
