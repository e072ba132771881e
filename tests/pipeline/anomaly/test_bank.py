from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.anomaly.bank import Bank, BankError, build_bank


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    return unit(rng.normal(size=(500, 32))), unit(rng.normal(size=(40, 32)))


@pytest.mark.parametrize("k", [1, 5])
def test_flat_scores_equal_exact_search(data: tuple[np.ndarray, np.ndarray], k: int) -> None:
    xb, xq = data
    bank = Bank.create("enc", 32, (64, 64), "flat", k=k)
    bank.add(xb)
    d = np.sqrt(((xq[:, None, :] - xb[None, :, :]) ** 2).sum(-1))
    expected = np.sort(d, axis=1)[:, :k].mean(1)
    np.testing.assert_allclose(bank.scores(xq), expected, atol=1e-5)


def test_hnsw_close_to_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    xb, xq = data
    flat = Bank.create("enc", 32, (64, 64), "flat")
    hnsw = Bank.create("enc", 32, (64, 64), "hnsw")
    flat.add(xb)
    hnsw.add(xb)
    recall_at_1 = np.mean(np.isclose(flat.scores(xq), hnsw.scores(xq), atol=1e-5))
    assert recall_at_1 >= 0.9


def test_save_load_roundtrip_and_encoder_check(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    xb, xq = data
    groups = np.arange(len(xb)) // 10
    bank = build_bank(xb, groups, "enc-A", (64, 64), false_alarm_rate=0.05, sources=["s"])
    assert bank.meta.crops == 500 and bank.meta.calibration_groups == 50
    bank.save(tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank")
    assert len(loaded) == 500 and loaded.meta.threshold == pytest.approx(bank.meta.threshold)
    assert loaded.meta.sources == ["s"] and loaded.meta.input_size == (64, 64)
    np.testing.assert_allclose(loaded.scores(xq), bank.scores(xq))
    loaded.check_encoder("enc-A", 32, 0, "here")
    with pytest.raises(BankError, match="built with another encoder"):
        loaded.check_encoder("enc-B", 32, 0, "here")
    with pytest.raises(BankError, match="built with another encoder"):
        loaded.check_encoder("enc-A", 64, 0, "here")
    bank.save(tmp_path / "bank")  # overwrite in place
    assert len(Bank.load(tmp_path / "bank")) == 500


def test_load_errors(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(BankError, match=r"bank not found.*siamstream bank build"):
        Bank.load(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BankError, match="not a bank"):
        Bank.load(tmp_path / "empty_dir")
    empty = Bank.create("enc", 32, (64, 64))
    empty.save(tmp_path / "empty")
    with pytest.raises(BankError, match="empty"):
        Bank.load(tmp_path / "empty")
    with pytest.raises(BankError, match="empty"):
        empty.scores(data[1])
    good = Bank.create("enc", 32, (64, 64))
    good.add(data[0])
    good.with_threshold(1.0, 0.01, 10, 2, 0.5)
    good.save(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(BankError, match="corrupt FAISS index"):
        Bank.load(tmp_path / "corrupt")
    good.save(tmp_path / "badmeta")
    (tmp_path / "badmeta" / "meta.json").write_text("{not json")
    with pytest.raises(BankError, match="corrupt bank metadata"):
        Bank.load(tmp_path / "badmeta")
    good.save(tmp_path / "mismatch")
    meta = json.loads((tmp_path / "mismatch" / "meta.json").read_text())
    meta["sample_count"] = 3
    (tmp_path / "mismatch" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match="index holds 500 vectors"):
        Bank.load(tmp_path / "mismatch")


def test_add_rejects_wrong_dimension() -> None:
    bank = Bank.create("enc", 32, (64, 64))
    with pytest.raises(BankError, match=r"\(N, 32\)"):
        bank.add(np.zeros((3, 16), np.float32))


def test_threshold_separates_outliers_from_good() -> None:
    # A line makes 4 kinds of part; each part (group) is a new instance of its kind seen in 15 crops.
    rng = np.random.default_rng(0)
    kinds = unit(rng.normal(size=(4, 16)))

    def parts(n: int, crops: int) -> np.ndarray:
        inst = kinds[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 16))
        return unit(np.repeat(inst, crops, axis=0) + 0.02 * rng.normal(size=(n * crops, 16)))

    good = parts(40, 15)
    groups = np.repeat(np.arange(40), 15)
    bank = build_bank(good, groups, "enc", (8, 8), folds=4, false_alarm_rate=0.05)
    defects = unit(kinds[rng.integers(0, 4, 50)] + 0.6 * rng.normal(size=(50, 16)))
    new_good = parts(100, 1)
    assert (bank.scores(defects) > bank.meta.threshold).mean() > 0.9
    assert (bank.scores(new_good) > bank.meta.threshold).mean() <= 0.1
    assert bank.meta.calibration_groups == 40 and bank.meta.calibration_samples == 600


def test_patch_bank_scores_worst_patch_by_hand() -> None:
    # Good crops: 4 patches, all near e0. A query crop with one patch at e1 scores that patch's distance.
    e = np.eye(4, dtype=np.float32)
    good = np.tile(e[0], (10, 4, 1))
    bank = Bank.create("enc", 4, (8, 8), level="patch", patches_per_crop=4)
    bank.add(good.reshape(-1, 4))
    query = np.tile(e[0], (2, 4, 1))
    query[1, 2] = e[1]
    np.testing.assert_allclose(bank.score_crops(query), [0.0, np.sqrt(2)], atol=1e-6)


def test_patch_bank_needs_patch_features() -> None:
    from pipeline.anomaly.bank import crop_features
    from pipeline.types import Embeddings

    with pytest.raises(BankError, match="no patch features"):
        crop_features(Embeddings(np.ones((2, 3), np.float32)), "patch")
    emb = Embeddings(np.ones((2, 3), np.float32), np.ones((2, 4, 5), np.float32), (2, 2))
    assert crop_features(emb, "patch").shape == (2, 4, 5)
    assert crop_features(emb, "global").shape == (2, 1, 3)


def test_coreset_bank_keeps_fraction_and_reports_coverage() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 16, 8)).astype(np.float32)  # 40 crops x 16 patches
    groups = np.repeat(np.arange(10), 4)
    bank = build_bank(feats, groups, "enc", (8, 8), level="patch", coreset_fraction=0.1)
    assert len(bank) == 64 and bank.meta.crops == 40 and bank.meta.coreset_coverage > 0
    # Every good vector lies within the stated coverage of the bank.
    assert bank.scores(feats.reshape(-1, 8)).max() <= bank.meta.coreset_coverage + 1e-4


def test_one_part_cannot_be_calibrated(data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(BankError, match="only one part or image"):
        build_bank(data[0][:10], np.zeros(10), "enc", (8, 8))


def test_save_refuses_to_replace_a_folder_that_is_not_a_bank(tmp_path: Path,
                                                              data: tuple[np.ndarray, np.ndarray]) -> None:
    bank = Bank.create("enc", 32, (64, 64))
    bank.add(data[0])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(BankError, match="not a bank; refusing"):
        bank.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BankError, match="cannot write the bank"):
        bank.save(tmp_path / "file" / "bank")


def clustered(n: int, dim: int, centers: int, seed: int) -> np.ndarray:
    """Vectors around ``centers`` cluster centres: the structure IVF cells are made for (patch features have it)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)) * 4.0
    return (c[rng.integers(centers, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("index_type", ["ivf-flat", "ivf-pq"])
def test_ivf_indexes_against_exact_search(index_type: str) -> None:
    xb, xq = clustered(8000, 32, 40, 1), clustered(300, 32, 40, 1)[::3]
    flat = Bank.create("enc", 32, (64, 64), "flat")
    flat.add(xb)
    exact = flat.scores(xq)
    bank = Bank.create("enc", 32, (64, 64), index_type, nprobe=8)
    assert not bank.trained
    bank.add(xb)
    assert bank.trained and bank.meta.nlist == 205  # 4 sqrt(8000) = 358 cells, capped at 8000 // 39 = 205
    got = bank.scores(xq)
    if index_type == "ivf-flat":
        # Exact distances inside the cells searched: most queries find their true nearest neighbour.
        assert np.mean(np.isclose(got, exact, rtol=1e-4)) >= 0.9
        assert np.all(got >= exact - 1e-4)  # never closer than the true nearest neighbour
        everything = Bank.create("enc", 32, (64, 64), "ivf-flat", nprobe=10_000)
        everything.add(xb)
        np.testing.assert_allclose(everything.scores(xq), exact, rtol=1e-4)  # all cells searched: exact
    else:
        assert bank.meta.pq_m == 8  # 32 dims / 4
        assert np.median(np.abs(got - exact) / exact) < 0.15  # compressed codes: close, not equal
        assert np.corrcoef(got, exact)[0, 1] > 0.9


@pytest.mark.parametrize("index_type", ["hnsw", "ivf-flat", "ivf-pq"])
def test_every_index_type_survives_save_load_and_append(tmp_path: Path, index_type: str) -> None:
    xb, xq = clustered(6000, 16, 20, 2), clustered(50, 16, 20, 3)
    bank = build_bank(xb, np.arange(len(xb)) // 100, "enc", (64, 64), index_type=index_type, nprobe=4)
    before = bank.scores(xq)
    bank.save(tmp_path / "b")
    loaded = Bank.load(tmp_path / "b")
    assert loaded.meta.index_type == index_type and loaded.meta.nprobe == 4
    np.testing.assert_allclose(loaded.scores(xq), before, rtol=1e-5)
    loaded.add(xq)  # an appended good sample is then found close by (PQ: up to its quantisation error)
    assert len(loaded) == len(xb) + len(xq)
    assert np.median(loaded.scores(xq)) < (0.9 if index_type == "ivf-pq" else 0.2) * np.median(before)


def test_ivf_needs_enough_vectors_to_train() -> None:
    bank = Bank.create("enc", 16, (64, 64), "ivf-flat", nlist=100)
    with pytest.raises(BankError, match=r"needs at least 100 vectors.*index = \"flat\""):
        bank.add(clustered(50, 16, 5, 0))
    with pytest.raises(BankError, match="does not divide"):
        Bank.create("enc", 16, (64, 64), "ivf-pq", pq_m=5).add(clustered(2000, 16, 5, 0))
    with pytest.raises(BankError, match="unknown index type 'ivf'"):
        Bank.create("enc", 16, (64, 64), "ivf")


def test_index_file_of_another_type_than_its_metadata(tmp_path: Path) -> None:
    bank = Bank.create("enc", 16, (64, 64), "flat")
    bank.add(clustered(100, 16, 5, 0))
    bank.with_threshold(1.0, 0.01, 10, 2, 0.5)
    bank.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    meta["index_type"] = "ivf-pq"
    (tmp_path / "b" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match="holds a flat one"):
        Bank.load(tmp_path / "b")


def test_bank_lock_serialises_read_modify_write(tmp_path: Path) -> None:
    import threading

    from pipeline.anomaly.bank import append_samples, bank_lock

    base = Bank.create("enc", 8, (64, 64))
    base.add(clustered(100, 8, 4, 0))
    base.with_threshold(1.0, 0.01, 10, 2, 0.5)
    base.save(tmp_path / "b")

    def add(seed: int) -> None:
        with bank_lock(tmp_path / "b"):
            bank = Bank.load(tmp_path / "b")
            append_samples(bank, clustered(10, 8, 4, seed)[:, None, :], f"s{seed}", coreset_fraction=1.0)
            bank.save(tmp_path / "b")

    threads = [threading.Thread(target=add, args=(s,)) for s in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = Bank.load(tmp_path / "b")
    assert len(final) == 100 + 6 * 10  # no add lost
    assert sorted(final.meta.sources) == [f"s{s}" for s in range(1, 7)]
    with bank_lock(tmp_path / "missing"):  # no bank yet: no lock file, loading reports the problem
        pass
    assert not (tmp_path / ".missing.lock").exists()


def test_out_of_fold_scores_never_see_their_own_part() -> None:
    """The calibration `bank build` and `eval anomaly` share: a part's crops are scored against banks built
    without any crop of that part, so a part identical to nothing else scores far, however many crops it has."""
    from pipeline.anomaly.bank import calibration_patch_scores, out_of_fold_patch_scores

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 4)  # 6 parts, 4 crops each
    feats = rng.normal(size=(24, 3, 8)).astype(np.float32) * 0.01 + groups[:, None, None]  # parts far apart
    built_from: list[int] = []

    def make_bank(rows: np.ndarray) -> Bank:
        built_from.append(len(rows))
        bank = Bank.create("enc", 8, (32, 32), level="patch", patches_per_crop=3)
        bank.add(rows.reshape(-1, 8))
        return bank

    oof = out_of_fold_patch_scores(feats, groups, make_bank, folds=3, seed=0)
    assert built_from == [16, 16, 16]  # two parts held out per fold
    assert oof.shape == (24, 3) and oof.min() > 0.5  # never its own part (a crop of it would be ~0.01 away)
    norm, normalised = calibration_patch_scores(oof, groups, cell_norm=True)
    assert norm is not None and normalised.shape == oof.shape
    none, same = calibration_patch_scores(oof, groups, cell_norm=False)
    assert none is None and same is oof


def test_small_searches_run_on_one_thread_with_the_same_answer() -> None:
    import faiss

    from pipeline.anomaly.bank import SMALL_SEARCH, search

    rng = np.random.default_rng(0)
    index = faiss.IndexFlatL2(16)
    index.add(rng.random((500, 16), dtype=np.float32))
    before = faiss.omp_get_max_threads()
    for n in (3, SMALL_SEARCH + 5):
        q = rng.random((n, 16), dtype=np.float32)
        d, i = search(index, q, 2)
        d0, i0 = index.search(q, 2)
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_allclose(d, d0, rtol=1e-6)
        assert faiss.omp_get_max_threads() == before  # the thread setting is given back
