from __future__ import annotations

import numpy as np
import pytest

from pipeline.gallery import Gallery


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    x = v + noise * rng.normal(size=v.shape).astype(np.float32)
    return x / np.linalg.norm(x)


def test_a_person_seen_on_another_camera_keeps_one_global_id() -> None:
    rng = np.random.default_rng(0)
    people = _unit(rng, 3)
    g = Gallery(16, threshold=0.3)
    first = [g.assign(p, "cam1", 0.0) for p in people]
    assert all(m.new for m in first) and len({m.global_id for m in first}) == 3
    again = g.assign(_near(people[1], rng), "cam2", 5.0)
    assert not again.new and again.global_id == first[1].global_id
    assert again.camera == "cam1" and again.seen_at == 0.0 and again.distance < 0.3  # seen before: where and when
    stranger = g.assign(_unit(rng, 1)[0], "cam2", 6.0)
    assert stranger.new


def test_the_same_camera_is_never_the_match() -> None:
    rng = np.random.default_rng(1)
    p = _unit(rng, 1)[0]
    g = Gallery(16, threshold=0.3)
    a = g.assign(p, "cam1", 0.0)
    b = g.assign(_near(p, rng), "cam1", 1.0)  # the tracker's business: two tracks of one camera stay apart
    assert b.new and b.global_id != a.global_id
    c = g.assign(_near(p, rng), "cam2", 2.0)
    assert not c.new and c.global_id in (a.global_id, b.global_id)


def test_ambiguous_matches_start_a_new_id_with_a_margin() -> None:
    rng = np.random.default_rng(2)
    p = _unit(rng, 1)[0]
    twin = _near(p, rng, 0.02)
    g = Gallery(16, threshold=0.5, margin=0.1)
    g.assign(p, "cam1", 0.0)
    g.assign(twin, "cam2", 0.0)  # links to p: the same id on two cameras, not a rival
    assert len({e.global_id for e in g._entries.values()}) == 1
    other = Gallery(16, threshold=0.5, margin=0.1)
    a, b = other.assign(p, "cam1", 0.0), other.assign(twin, "cam1", 0.0)  # two people alike on one camera
    assert a.global_id != b.global_id
    assert other.assign(_near(p, rng, 0.01), "cam3", 1.0).new  # equally near both: ambiguous


def test_old_entries_are_forgotten_and_names_stay() -> None:
    rng = np.random.default_rng(3)
    p, q = _unit(rng, 2)
    g = Gallery(16, threshold=0.3, max_age_s=60.0)
    g.assign(p, "cam1", 0.0)
    gid = g.enroll("alice", np.stack([_near(q, rng), _near(q, rng)]))
    assert g.assign(_near(p, rng), "cam2", 100.0).new  # seen 100 s ago: forgotten
    named = g.assign(_near(q, rng), "cam2", 1000.0)
    assert named.global_id == gid and named.name == "alice" and named.camera == ""
    look = g.assign(_near(q, rng), "cam3", 1001.0, store=False)
    assert look.name == "alice" and len(g) == 2  # the name and its cam2 track; a look-up stores nothing


def test_bad_input() -> None:
    g = Gallery(4, threshold=0.3)
    with pytest.raises(ValueError, match="non-zero"):
        g.assign(np.zeros(4), "cam1", 0.0)
    with pytest.raises(ValueError, match="camera"):
        g.assign(np.ones(4), "", 0.0)
    with pytest.raises(ValueError, match="name"):
        g.enroll("", np.ones((1, 4)))
    with pytest.raises(ValueError, match="threshold"):
        Gallery(4, threshold=3.0)
