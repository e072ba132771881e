from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from encoders.evaluate import (
    EvaluationError,
    OneShotResult,
    OneShotRun,
    background_oneshot_runs,
    equal_error_rate,
    evaluate_oneshot,
    evaluate_verification,
    load_oneshot_runs,
    nearest_support,
    pair_distances,
    save_roc_png,
)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- verification


def test_pair_distances_are_cosine_distances_of_all_unordered_pairs() -> None:
    emb = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    dist, genuine = pair_distances(emb, np.array([0, 0, 1]))
    np.testing.assert_allclose(dist, [1.0, 1 - np.sqrt(0.5), 1 - np.sqrt(0.5)], atol=1e-6)
    assert genuine.tolist() == [True, False, False]


def test_verification_by_hand() -> None:
    # Two identities on the unit circle: A at 0 and 70 degrees, B at 90 and 100 degrees.
    # Genuine distances (1 - cos): A-A 1 - cos 70 = 0.658, B-B 1 - cos 10 = 0.0152.
    # Impostor: 70-90 0.0603, 70-100 0.134, 0-90 1.0, 0-100 1.174.
    angles = np.radians([0.0, 70.0, 90.0, 100.0])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = evaluate_verification(emb, np.array([0, 0, 1, 1]))
    assert (result.genuine_pairs, result.impostor_pairs) == (2, 4)
    # AUC = P(genuine closer than impostor): 0.0152 beats all 4, 0.658 beats 2 -> 6 / 8
    assert result.auc == pytest.approx(0.75)
    # Accepting d <= 0.134 lets in 2 of 4 impostors (FAR 0.5) and rejects 1 of 2 genuine pairs (FRR 0.5).
    assert result.eer == pytest.approx(0.5)
    assert result.threshold == pytest.approx(1 - np.cos(np.radians(30.0)))


def test_equal_error_rate_interpolates_between_roc_points() -> None:
    fpr = np.array([0.0, 0.2, 0.6])
    tpr = np.array([0.0, 0.6, 1.0])  # FNR 1.0, 0.4, 0.0; FPR - FNR: -1.0, -0.2, 0.6
    thresholds = np.array([0.0, 0.5, 1.0])
    eer, threshold = equal_error_rate(fpr, tpr, thresholds)
    # on the segment from (0.2, 0.4) to (0.6, 0.0): t = 0.2 / 0.8 = 0.25 -> FPR 0.3, FNR 0.3
    assert eer == pytest.approx(0.3)
    assert threshold == pytest.approx(0.625)


def test_separable_embeddings_give_auc_one_and_eer_zero() -> None:
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(4, 16)))
    emb = _unit(np.repeat(centres, 5, axis=0) + 0.01 * rng.normal(size=(20, 16)))
    labels = np.repeat(np.arange(4), 5)
    result = evaluate_verification(emb, labels)
    assert result.auc == pytest.approx(1.0)
    assert result.eer == pytest.approx(0.0, abs=1e-9)
    dist, genuine = pair_distances(emb, labels)
    assert dist[genuine].max() <= result.threshold + 1e-6 <= dist[~genuine].min() + 1e-6


def test_random_embeddings_give_auc_near_half() -> None:
    rng = np.random.default_rng(1)
    emb = _unit(rng.normal(size=(200, 32)))
    result = evaluate_verification(emb, rng.integers(0, 10, size=200))
    assert 0.4 < result.auc < 0.6
    assert 0.4 < result.eer < 0.6


def test_verification_needs_both_kinds_of_pairs() -> None:
    with pytest.raises(EvaluationError, match="genuine and impostor"):
        evaluate_verification(_unit(np.eye(3)), np.array([0, 1, 2]))


def test_roc_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    emb = _unit(rng.normal(size=(30, 8)))
    result = evaluate_verification(emb, np.repeat(np.arange(6), 5))
    save_roc_png(result, tmp_path / "roc.png")
    img = cv2.imread(str(tmp_path / "roc.png"))
    assert img is not None and img.shape[0] > 100 and img.std() > 0


# ---------------------------------------------------------------------------------------------------- one-shot


def test_nearest_support_takes_the_most_similar() -> None:
    support = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    queries = _unit(np.array([[0.1, 1.0], [-1.0, 0.2], [1.0, -0.1]]))
    assert nearest_support(support, queries).tolist() == [1, 2, 0]


def test_oneshot_result_accuracy_and_interval() -> None:
    result = OneShotResult(("a", "b"), (18, 20), (20, 20))
    assert result.per_run == (0.9, 1.0)
    assert result.accuracy == pytest.approx(0.95)
    lo, hi = result.interval()
    assert lo < 0.95 < hi <= 1.0 and hi - lo < 0.2


def _write_runs(root: Path, n_runs: int = 2, ways: int = 3) -> None:
    """Lake's layout with images whose grey level encodes the class (query of class c has level 40 c + 2)."""
    rng = np.random.default_rng(0)
    for r in range(1, n_runs + 1):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        order = rng.permutation(ways)
        lines = []
        for c in range(ways):
            cv2.imwrite(str(run / "training" / f"class{c + 1:02d}.png"), np.full((8, 8), 40 * c, np.uint8))
        for q, c in enumerate(order):
            cv2.imwrite(str(run / "test" / f"item{q + 1:02d}.png"), np.full((8, 8), 40 * c + 2, np.uint8))
            lines.append(f"run{r:02d}/test/item{q + 1:02d}.png run{r:02d}/training/class{c + 1:02d}.png")
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")


def _grey_level_embed(images: np.ndarray) -> np.ndarray:
    """A 'model' that recognises the grey level: one-hot bins of 40 levels."""
    level = images.reshape(len(images), -1).mean(axis=1)
    out = np.zeros((len(images), 8), np.float32)
    out[np.arange(len(images)), (level // 40).astype(int)] = 1.0
    return out


def _load(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img[..., None]


def test_load_runs_and_score_them(tmp_path: Path) -> None:
    _write_runs(tmp_path)
    runs = load_oneshot_runs(tmp_path)
    assert [r.name for r in runs] == ["run01", "run02"]
    assert all(r.ways == 3 and sorted(r.answers) == [0, 1, 2] for r in runs)
    result = evaluate_oneshot(runs, _grey_level_embed, _load)
    assert result.accuracy == 1.0 and result.trials == (3, 3)
    # a model that sees nothing gets the first class for every query: one in three right
    blind = evaluate_oneshot(runs, lambda x: np.ones((len(x), 4), np.float32), _load)
    assert blind.accuracy == pytest.approx(1 / 3)


def test_load_runs_from_zip_extracts_once(tmp_path: Path) -> None:
    import shutil

    _write_runs(tmp_path / "src")
    archive = Path(shutil.make_archive(str(tmp_path / "runs"), "zip", tmp_path / "src"))
    runs = load_oneshot_runs(archive, tmp_path / "cache")
    again = load_oneshot_runs(archive, tmp_path / "cache")
    assert [r.queries for r in runs] == [r.queries for r in again] and len(runs) == 2


def test_bad_runs_are_clear_errors(tmp_path: Path) -> None:
    import shutil

    with pytest.raises(EvaluationError, match="not found"):
        load_oneshot_runs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match=r"class_labels\.txt"):
        load_oneshot_runs(tmp_path / "empty")
    _write_runs(tmp_path / "bad", n_runs=1)
    labels = tmp_path / "bad" / "run01" / "class_labels.txt"
    labels.write_text("run01/test/item01.png run01/training/class09.png\n")
    with pytest.raises(EvaluationError, match=r"class09\.png is not an image"):
        load_oneshot_runs(tmp_path / "bad")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="not a readable zip"):
        load_oneshot_runs(tmp_path / "junk.zip", tmp_path / "cache")
    _write_runs(tmp_path / "src", n_runs=1)
    archive = Path(shutil.make_archive(str(tmp_path / "runs"), "zip", tmp_path / "src"))
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(EvaluationError, match="cannot extract"):
        load_oneshot_runs(archive, tmp_path / "file" / "cache")


def test_background_runs_are_within_one_alphabet_across_drawers(tmp_path: Path) -> None:
    for alphabet, n_chars in (("Alpha", 5), ("Beta", 3)):
        for c in range(n_chars):
            d = tmp_path / alphabet / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for drawer in range(1, 5):
                cv2.imwrite(str(d / f"{c:04d}_{drawer:02d}.png"), np.zeros((4, 4), np.uint8))
    runs = background_oneshot_runs(tmp_path, n_runs=4, ways=4, seed=0)
    assert len(runs) == 4
    for run in runs:
        assert {p.parts[-3] for p in run.support + run.queries} == {"Alpha"}  # Beta has too few characters
        for q, a in zip(run.queries, run.answers, strict=True):
            assert q.parent == run.support[a].parent  # the answer is the query's character
            assert q.name.split("_")[1] != run.support[a].name.split("_")[1]  # from another drawer
    with pytest.raises(EvaluationError, match="no alphabet with 9 characters"):
        background_oneshot_runs(tmp_path, ways=9)


def test_official_omniglot_runs(shared_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runs = load_oneshot_runs(shared_data("omniglot", "all_runs.zip"), tmp_path)
    assert len(runs) == 20
    for run in runs:
        assert run.ways == 20 and len(run.queries) == 20
        assert sorted(run.answers) == list(range(20))  # each class is asked once per run


def test_oneshot_run_checks_its_answers() -> None:
    with pytest.raises(EvaluationError, match="support indices"):
        OneShotRun("r", (Path("a"), Path("b")), (Path("q"),), (5,))


# Re-identification ranking


def test_rank_gallery_by_hand() -> None:
    from encoders.evaluate import rank_gallery

    # gallery: id 1 cam 2, id 2 cam 2, id 1 cam 1 (same camera as the query: left out), id 1 cam 3, junk
    gids = np.array([1, 2, 1, 1, -1])
    gcams = np.array([2, 2, 1, 3, 2])
    dist = np.array([[0.5, 0.1, 0.0, 0.9, 0.05]])
    r = rank_gallery(dist, np.array([1]), np.array([1]), gids, gcams, max_rank=5)
    # ranked after the protocol: id2 (0.1), id1 (0.5), id1 (0.9): first true match at rank 2
    assert r.rank(1) == 0.0 and r.rank(2) == 1.0 and r.ranks.tolist() == [2]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_rank_gallery_skips_queries_without_a_match() -> None:
    from encoders.evaluate import rank_gallery

    gids, gcams = np.array([1, 2]), np.array([1, 2])
    dist = np.array([[0.2, 0.1], [0.3, 0.4]])
    # query 0 (id 1, cam 1): its only match is from its own camera; query 1 (id 2, cam 1): rank 2
    r = rank_gallery(dist, np.array([1, 2]), np.array([1, 1]), gids, gcams)
    assert r.queries == 1 and r.ranks.tolist() == [0, 2] and r.mAP == pytest.approx(0.5)
    with pytest.raises(EvaluationError, match="no query has a true match"):
        rank_gallery(dist[:1], np.array([1]), np.array([1]), gids, gcams)
    with pytest.raises(ValueError, match="distances"):
        rank_gallery(dist, np.array([1]), np.array([1]), gids, gcams)
