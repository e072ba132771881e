from __future__ import annotations

import numpy as np

from lab.evaluation.gallery_eval import enrolment_rates, reentry_rates, tracks_from


def _data(noise: float, identities: int = 20, cams: int = 3, per: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, 32))
    emb, ids, cam = [], [], []
    for pid in range(1, identities + 1):
        for c in range(1, cams + 1):
            for _ in range(per):
                emb.append(centres[pid - 1] + noise * rng.normal(size=32))
                ids.append(pid)
                cam.append(c)
    x = np.array(emb, np.float32)
    return tracks_from(x / np.linalg.norm(x, axis=1, keepdims=True), np.array(ids), np.array(cam))


def test_tracks_are_one_mean_per_identity_and_camera_without_junk() -> None:
    t = _data(0.1, identities=3)
    assert len(t.ids) == 9 and set(zip(t.ids.tolist(), t.cams.tolist(), strict=True)) == {
        (p, c) for p in (1, 2, 3) for c in (1, 2, 3)}
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, rtol=1e-5)
    junk = tracks_from(np.eye(3, dtype=np.float32), np.array([-1, 0, 5]), np.array([1, 1, 2]))
    assert junk.ids.tolist() == [5]


def test_separable_identities_are_all_linked_and_never_merged() -> None:
    t = _data(0.05)
    r = reentry_rates(t, np.arange(1, 21), threshold=0.3)
    assert r["reentry_right"] == 1.0 and r["false_merge"] == 0.0 and r["first_right"] == 1.0
    assert r["reentries"] == 20 * 2 and r["tracks"] == 60


def test_a_threshold_too_loose_merges_people_and_one_too_tight_links_nobody() -> None:
    t = _data(0.05)
    loose = reentry_rates(t, np.arange(1, 21), threshold=1.9)
    assert loose["false_merge"] > 0.5
    tight = reentry_rates(t, np.arange(1, 21), threshold=0.0)
    assert tight["reentry_right"] == 0.0 and tight["false_merge"] == 0.0


def test_enrolled_names_reach_other_cameras_and_strangers_get_none() -> None:
    t = _data(0.05)
    r = enrolment_rates(t, np.arange(1, 11), np.arange(11, 21), threshold=0.3)
    assert r["name_right"] == 1.0 and r["false_name"] == 0.0
    assert r["named_tracks"] == 10 * 2 and r["stranger_tracks"] == 10 * 3
