"""Metric-learning losses checked against values worked out by hand on points whose distances are obvious."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from encoders.losses import (
    batch_hard_triplet_loss,
    contrastive_loss,
    make_loss,
    nt_xent_loss,
    pairwise_distances,
    semi_hard_triplet_loss,
    supcon_loss,
)


def line(*xs: float) -> Tensor:
    """Points on a line as ``(N, 1)`` float32 embeddings."""
    return torch.tensor([[x] for x in xs], dtype=torch.float32)


def labels_of(*ys: int) -> Tensor:
    return torch.tensor(ys, dtype=torch.long)


E1 = [1.0, 0.0]
E2 = [0.0, 1.0]


# ---- pairwise_distances -------------------------------------------------------------------------------------


def test_pairwise_distances_on_a_line_are_exact() -> None:
    # Points 0, 1, 3: |0-1| = 1, |0-3| = 3, |1-3| = 2.
    d = pairwise_distances(line(0, 1, 3))
    assert torch.equal(d, torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]]))
    d2 = pairwise_distances(line(0, 1, 3), squared=True)
    assert torch.equal(d2, torch.tensor([[0.0, 1.0, 9.0], [1.0, 0.0, 4.0], [9.0, 4.0, 0.0]]))


def test_pairwise_distances_in_2d() -> None:
    # (0, 0) -> (3, 4) is the 3-4-5 triangle; (3, 4) -> (3, 0) is 4; (0, 0) -> (3, 0) is 3.
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]])
    expected = torch.tensor([[0.0, 5.0, 3.0], [5.0, 0.0, 4.0], [3.0, 4.0, 0.0]])
    torch.testing.assert_close(pairwise_distances(x), expected)


def test_pairwise_distances_gradient_is_finite_at_identical_points() -> None:
    # Rows 0 and 1 coincide (distance 0, where a plain sqrt has an infinite derivative); row 2 is 5 away from both.
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)
    d = pairwise_distances(x)
    assert d[0, 1].item() == 0.0 and d[0, 2].item() == pytest.approx(5.0)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # sum_ij d_ij counts each pair twice; d d_02 / d x_0 = (x_0 - x_2) / 5 = (-3, -4) / 5 = (-0.6, -0.8),
    # the coincident pair contributes 0, so grad x_0 = 2 * (-0.6, -0.8) = (-1.2, -1.6), same for x_1;
    # x_2 is pulled by both: 2 * 2 * (0.6, 0.8) = (2.4, 3.2).
    expected = torch.tensor([[-1.2, -1.6], [-1.2, -1.6], [2.4, 3.2]])
    torch.testing.assert_close(x.grad, expected)


# ---- contrastive --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same", "margin", "expected"),
    [
        # same pair, d = 5: d^2 = 25
        ([0.0, 0.0], [3.0, 4.0], 1.0, 1.0, 25.0),
        # same pair, identical points: 0
        ([1.0, 1.0], [1.0, 1.0], 1.0, 1.0, 0.0),
        # different pair inside the margin, d = 1, margin 2: (2 - 1)^2 = 1
        ([0.0, 0.0], [1.0, 0.0], 0.0, 2.0, 1.0),
        # different pair inside the margin, d = 0.5, margin 2: (2 - 0.5)^2 = 2.25
        ([0.0, 0.0], [0.0, 0.5], 0.0, 2.0, 2.25),
        # different pair outside the margin, d = 5, margin 2: max(0, -3)^2 = 0
        ([0.0, 0.0], [3.0, 4.0], 0.0, 2.0, 0.0),
        # different pair exactly at the margin, d = 2: 0
        ([0.0, 0.0], [0.0, 2.0], 0.0, 2.0, 0.0),
    ],
)
def test_contrastive_single_pairs(a: list[float], b: list[float], same: float, margin: float,
                                  expected: float) -> None:
    loss = contrastive_loss(torch.tensor([a]), torch.tensor([b]), torch.tensor([same]), margin=margin)
    assert loss.item() == pytest.approx(expected)


def test_contrastive_is_the_mean_over_pairs_and_takes_bool_labels() -> None:
    # Pairs: same d=5 -> 25; different d=1 (margin 2) -> 1; different d=5 -> 0. Mean = 26 / 3.
    a = torch.zeros(3, 2)
    b = torch.tensor([[3.0, 4.0], [1.0, 0.0], [3.0, 4.0]])
    same = torch.tensor([True, False, False])
    assert contrastive_loss(a, b, same, margin=2.0).item() == pytest.approx(26.0 / 3.0)


def test_contrastive_gradient_is_finite_for_a_different_pair_at_distance_zero() -> None:
    # Identical different-class points, margin 2: (2 - 0)^2 = 4, and the sqrt at 0 must not produce NaN.
    a = torch.tensor([[1.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss = contrastive_loss(a, b, torch.tensor([0.0]), margin=2.0)
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


# ---- batch-hard triplet -------------------------------------------------------------------------------------


def test_batch_hard_two_classes_of_two() -> None:
    # Points 0, 1 (class 0) and 3, 6 (class 1), margin 0.5.
    #   anchor 0: hardest positive 1 (d=1), hardest negative 3 (d=3): relu(1 - 3 + 0.5) = 0
    #   anchor 1: hardest positive 0 (d=1), hardest negative 3 (d=2): relu(1 - 2 + 0.5) = 0
    #   anchor 3: hardest positive 6 (d=3), hardest negative 1 (d=2): relu(3 - 2 + 0.5) = 1.5
    #   anchor 6: hardest positive 3 (d=3), hardest negative 1 (d=5): relu(3 - 5 + 0.5) = 0
    # mean over 4 anchors = 1.5 / 4 = 0.375
    loss = batch_hard_triplet_loss(line(0, 1, 3, 6), labels_of(0, 0, 1, 1), margin=0.5)
    assert loss.item() == pytest.approx(0.375)


def test_batch_hard_picks_the_farthest_positive_and_skips_anchors_without_positive() -> None:
    # Points 0, 1, 4 (class 0) and 5 (class 1, alone: no positive, so not an anchor), margin 0.5.
    #   anchor 0: positives d 1, 4 -> 4; negative 5 -> 5: relu(4 - 5 + 0.5) = 0
    #   anchor 1: positives d 1, 3 -> 3; negative 5 -> 4: relu(3 - 4 + 0.5) = 0
    #   anchor 4: positives d 4, 3 -> 4; negative 5 -> 1: relu(4 - 1 + 0.5) = 3.5
    # mean over 3 anchors = 3.5 / 3
    loss = batch_hard_triplet_loss(line(0, 1, 4, 5), labels_of(0, 0, 0, 1), margin=0.5)
    assert loss.item() == pytest.approx(3.5 / 3.0)


def test_batch_hard_soft_margin() -> None:
    # Same 4 points as above (0, 1 | 3, 6); d_ap - d_an per anchor: 1-3 = -2, 1-2 = -1, 3-2 = 1, 3-5 = -2.
    # softplus(-2) = ln(1 + e^-2) = 0.1269280, softplus(-1) = 0.3132617, softplus(1) = 1.3132617
    # mean = (0.1269280 + 0.3132617 + 1.3132617 + 0.1269280) / 4 = 1.8803794 / 4 = 0.4700948
    loss = batch_hard_triplet_loss(line(0, 1, 3, 6), labels_of(0, 0, 1, 1), margin=0.5, soft=True)
    assert loss.item() == pytest.approx(0.4700948, abs=1e-6)


# ---- semi-hard triplet --------------------------------------------------------------------------------------


def test_semi_hard_picks_the_closest_negative_farther_than_the_positive() -> None:
    # Points 0, 1 (class 0) and negatives 0.5, 1.5, 3 (classes 1, 2, 3: no positives of their own), margin 1.
    #   (a=0, p=1): d_ap = 1; negatives at d 0.5, 1.5, 3; semi-hard = 1.5: relu(1 - 1.5 + 1) = 0.5
    #   (a=1, p=0): d_ap = 1; negatives at d 0.5, 0.5, 2; semi-hard = 2:   relu(1 - 2 + 1) = 0
    # mean over the 2 pairs = 0.25 (batch-hard would use the 0.5-away negatives: relu(1 - 0.5 + 1) = 1.5 each)
    emb, labels = line(0, 1, 0.5, 1.5, 3), labels_of(0, 0, 1, 2, 3)
    assert semi_hard_triplet_loss(emb, labels, margin=1.0).item() == pytest.approx(0.25)
    assert batch_hard_triplet_loss(emb, labels, margin=1.0).item() == pytest.approx(1.5)


def test_semi_hard_falls_back_to_the_farthest_negative() -> None:
    # Points 0, 4 (class 0) and negatives 1, 2 (classes 1, 2), margin 1; every negative is closer than the positive.
    #   (a=0, p=4): d_ap = 4; negatives at d 1, 2 -> none > 4, farthest = 2: relu(4 - 2 + 1) = 3
    #   (a=4, p=0): d_ap = 4; negatives at d 3, 2 -> none > 4, farthest = 3: relu(4 - 3 + 1) = 2
    # mean = 2.5 (the hardest negatives would give 4 and 3, mean 3.5)
    loss = semi_hard_triplet_loss(line(0, 4, 1, 2), labels_of(0, 0, 1, 2), margin=1.0)
    assert loss.item() == pytest.approx(2.5)


def test_semi_hard_averages_over_every_positive_pair() -> None:
    # Points 0, 1, 2 (class 0) and 2.5 (class 1), margin 1; 6 ordered (a, p) pairs.
    #   (0, 1): d_ap 1, negative d 2.5 > 1 -> relu(1 - 2.5 + 1) = 0
    #   (0, 2): d_ap 2, negative d 2.5 > 2 -> relu(2 - 2.5 + 1) = 0.5
    #   (1, 0): d_ap 1, negative d 1.5 > 1 -> relu(1 - 1.5 + 1) = 0.5
    #   (1, 2): d_ap 1, negative d 1.5 > 1 -> 0.5
    #   (2, 0): d_ap 2, negative d 0.5 (fallback) -> relu(2 - 0.5 + 1) = 2.5
    #   (2, 1): d_ap 1, negative d 0.5 (fallback) -> relu(1 - 0.5 + 1) = 1.5
    # the lone class-1 point has no positive. mean = (0 + 0.5 + 0.5 + 0.5 + 2.5 + 1.5) / 6 = 5.5 / 6
    loss = semi_hard_triplet_loss(line(0, 1, 2, 2.5), labels_of(0, 0, 0, 1), margin=1.0)
    assert loss.item() == pytest.approx(5.5 / 6.0)


# ---- no valid terms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_fn", "labels"),
    [
        (lambda e, y: batch_hard_triplet_loss(e, y), labels_of(0, 1, 2)),  # no positives
        (lambda e, y: batch_hard_triplet_loss(e, y), labels_of(0, 0, 0)),  # no negatives
        (lambda e, y: batch_hard_triplet_loss(e, y, soft=True), labels_of(0, 1, 2)),
        (lambda e, y: semi_hard_triplet_loss(e, y), labels_of(0, 1, 2)),
        (lambda e, y: semi_hard_triplet_loss(e, y), labels_of(5, 5, 5)),
        (lambda e, y: supcon_loss(e, y), labels_of(0, 1, 2)),
    ],
)
def test_no_valid_term_gives_zero_that_still_backpropagates(loss_fn: Callable[[Tensor, Tensor], Tensor],
                                                            labels: Tensor) -> None:
    emb = line(0, 1, 3).requires_grad_(True)
    loss = loss_fn(emb, labels)
    assert loss.dim() == 0 and loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros_like(emb))


# ---- NT-Xent ------------------------------------------------------------------------------------------------


def test_nt_xent_single_pair_is_zero() -> None:
    # N = 1: the only other sample is the positive, so l = -log(exp(s/t) / exp(s/t)) = 0 whatever s is
    # (here the views are orthogonal, s = 0).
    loss = nt_xent_loss(torch.tensor([E1]), torch.tensor([E2]), temperature=0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("z2", "temperature", "expected"),
    [
        # Views equal: samples e1, e2, e1, e2. For e1: positive s = 1, negatives e2 (s 0) and e2 (s 0):
        # l = -log(e^(1/t) / (e^(1/t) + 2)) = ln(1 + 2 e^(-1/t)); every sample is alike by symmetry.
        # t = 1: ln(1 + 2/e) = ln(1.7357589) = 0.5514447
        ([E1, E2], 1.0, 0.5514447),
        # t = 0.5: ln(1 + 2 e^-2) = ln(1.2706706) = 0.2395448
        ([E1, E2], 0.5, 0.2395448),
        # Views swapped: samples e1, e2, e2, e1. For e1 the positive is e2 (s 0); others e2 (s 0), e1 (s 1):
        # l = -log(1 / (1 + 1 + e)) = ln(2 + e) = 1.5514447, again the same for all four samples.
        ([E2, E1], 1.0, 1.5514447),
    ],
)
def test_nt_xent_exact_for_two_orthogonal_pairs(z2: list[list[float]], temperature: float,
                                                 expected: float) -> None:
    loss = nt_xent_loss(torch.tensor([E1, E2]), torch.tensor(z2), temperature=temperature)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_normalises_its_inputs() -> None:
    # Scaling rows changes nothing: cosine similarity. Expected as the first case above, ln(1 + 2/e).
    z1 = torch.tensor([[3.0, 0.0], [0.0, 0.2]])
    z2 = torch.tensor([[7.0, 0.0], [0.0, 5.0]])
    assert nt_xent_loss(z1, z2, temperature=1.0).item() == pytest.approx(0.5514447, abs=1e-6)


def test_nt_xent_matching_views_beat_random_views() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 32, generator=g)
    matched = nt_xent_loss(z1, z1.clone(), temperature=0.05)
    unrelated = nt_xent_loss(z1, torch.randn(16, 32, generator=g), temperature=0.05)
    assert matched.item() < 0.1 < unrelated.item()


# ---- SupCon -------------------------------------------------------------------------------------------------


def test_supcon_three_points_one_class_pair() -> None:
    # e1, e1 (class 0) and e2 (class 1), t = 1. Anchor 0: positive s = 1, other s = 0:
    # l_0 = -log(e / (e + 1)) = ln(1 + 1/e) = ln(1.3678794) = 0.3132617; anchor 1 the same;
    # anchor 2 has no positive and is left out. Mean = 0.3132617.
    emb = torch.tensor([E1, E1, E2])
    assert supcon_loss(emb, labels_of(0, 0, 1), temperature=1.0).item() == pytest.approx(0.3132617, abs=1e-6)


def test_supcon_three_points_one_class() -> None:
    # e1, e1, -e1, all class 0, t = 1.
    #   anchor 0: others s = 1 (idx 1), -1 (idx 2); denominator e + 1/e = 3.0861613, both are positives:
    #     l_0 = -((1 - ln 3.0861613) + (-1 - ln 3.0861613)) / 2 = ln 3.0861613 = 1.1269280; anchor 1 the same
    #   anchor 2: others s = -1, -1; denominator 2/e; l_2 = -((-1 - ln(2/e)) * 2) / 2 = ln 2 = 0.6931472
    # mean = (2 * 1.1269280 + 0.6931472) / 3 = 2.9470032 / 3 = 0.9823344
    emb = torch.tensor([E1, [2.0, 0.0], [-0.5, 0.0]])  # scaled rows: cosine similarity ignores the length
    assert supcon_loss(emb, labels_of(0, 0, 0), temperature=1.0).item() == pytest.approx(0.9823344, abs=1e-6)


# ---- gradients ----------------------------------------------------------------------------------------------


def _label_loss_cases() -> list[tuple[str, Callable[[Tensor, Tensor], Tensor]]]:
    return [(name, make_loss(name, margin=0.2, temperature=0.1))
            for name in ("triplet_batch_hard", "triplet_soft", "triplet_semi_hard", "supcon")]


@pytest.mark.parametrize(("name", "loss_fn"), _label_loss_cases())
def test_label_losses_backpropagate_finite_gradients(name: str, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    emb = torch.cat([emb, emb[:2]]).requires_grad_(True)  # duplicated rows: zero distances inside the batch
    labels = labels_of(0, 0, 0, 1, 1, 1, 2, 2, 0, 1)
    loss = loss_fn(emb, labels)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0.0, name
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fn", [nt_xent_loss, lambda a, b: contrastive_loss(a, b, torch.tensor([1.0, 0.0, 0.0]))])
def test_pair_losses_backpropagate_finite_gradients(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(3, 4, generator=g).requires_grad_(True)
    b = torch.randn(3, 4, generator=g).requires_grad_(True)
    loss = fn(a, b)
    loss.backward()
    for t in (a, b):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ---- make_loss ----------------------------------------------------------------------------------------------


def test_make_loss_binds_margin_and_temperature() -> None:
    emb, labels = line(0, 1, 3, 6), labels_of(0, 0, 1, 1)
    assert make_loss("triplet_batch_hard", margin=0.5, temperature=0.1)(emb, labels).item() == pytest.approx(0.375)
    assert make_loss("triplet_soft", margin=0.5, temperature=0.1)(emb, labels).item() == pytest.approx(0.4700948)
    semi = make_loss("triplet_semi_hard", margin=1.0, temperature=0.1)
    assert semi(line(0, 4, 1, 2), labels_of(0, 0, 1, 2)).item() == pytest.approx(2.5)
    supcon = make_loss("supcon", margin=0.2, temperature=1.0)
    assert supcon(torch.tensor([E1, E1, E2]), labels_of(0, 0, 1)).item() == pytest.approx(0.3132617, abs=1e-6)


@pytest.mark.parametrize("name", ["contrastive", "nt_xent", "triplet", ""])
def test_make_loss_rejects_unknown_names_and_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match="triplet_batch_hard, triplet_soft, triplet_semi_hard, supcon"):
        make_loss(name, margin=0.2, temperature=0.1)


# ---- bad inputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pairwise_distances(torch.zeros(4)), r"expected shape \(N, D\), got \(4,\)"),
        (lambda: contrastive_loss(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3)),
         r"expected shape \(3, 2\).*got \(3, 3\)"),
        (lambda: contrastive_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2)),
         r"expected shape \(3,\), got \(2,\)"),
        (lambda: batch_hard_triplet_loss(torch.zeros(4, 2), labels_of(0, 1, 0)),
         r"expected shape \(4,\).*got \(3,\)"),
        (lambda: batch_hard_triplet_loss(torch.zeros(4), labels_of(0, 1, 0, 1)), r"expected shape \(N, D\)"),
        (lambda: semi_hard_triplet_loss(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long)),
         r"expected shape \(4,\).*got \(4, 1\)"),
        (lambda: nt_xent_loss(torch.zeros(2, 3), torch.zeros(3, 3)), r"expected shape \(2, 3\).*got \(3, 3\)"),
        (lambda: nt_xent_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=0.0), "temperature"),
        (lambda: supcon_loss(torch.zeros(5, 2), labels_of(0, 1)), r"expected shape \(5,\).*got \(2,\)"),
        (lambda: make_loss("supcon", margin=0.2, temperature=-1.0), "temperature"),
    ],
)
def test_bad_inputs_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---- behaviour ----------------------------------------------------------------------------------------------


def test_batch_hard_training_separates_two_gaussian_classes() -> None:
    # Two classes 8 units apart along one axis, unit noise on the other 7; a linear map to 4-D, L2-normalised
    # like EmbeddingNet, must learn to keep the class axis and drop the noise.
    g = torch.Generator().manual_seed(0)
    n = 32
    centers = torch.zeros(2, 8)
    centers[0, 0], centers[1, 0] = -4.0, 4.0
    labels = torch.arange(2).repeat_interleave(n)
    x = centers[labels] + torch.randn(2 * n, 8, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)

    def step() -> float:
        optimiser.zero_grad()
        loss = batch_hard_triplet_loss(F.normalize(model(x), dim=1), labels, margin=0.2)
        loss.backward()
        optimiser.step()
        return loss.item()

    first = step()
    for _ in range(99):  # 100 steps in all
        step()
    with torch.no_grad():
        last = batch_hard_triplet_loss(F.normalize(model(x), dim=1), labels, margin=0.2).item()
    assert first > 0.0
    assert last < 0.5 * first, (first, last)


# ---- patch_adaptation_terms ---------------------------------------------------------------------------------


def _grid(values: list[list[float]]) -> Tensor:
    """A (1, 1, 2, 2) feature map: one channel, 2x2 cells."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_patch_adaptation_terms_by_hand() -> None:
    from encoders.losses import patch_adaptation_terms

    clean = _grid([[0.0, 0.0], [0.0, 0.0]])
    jittered = _grid([[1.0, 0.0], [0.0, 0.0]])  # one of 4 cells moved by 1: invariance 1/4
    defective = _grid([[0.0, 0.0], [0.0, 3.0]])  # the painted cell moved by 3 (squared 9), nothing else moved
    anchor = _grid([[0.0, 0.0], [2.0, 0.0]])  # clean differs from the pretrained features in one cell: 4/4
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, 2:] = 1.0  # the bottom-right cell, and only it, is painted
    t = patch_adaptation_terms(clean, jittered, defective, anchor, mask, scale=1.0, margin=10.0)
    assert t["invariance"].item() == pytest.approx(0.25)
    assert t["anchor"].item() == pytest.approx(1.0)
    assert t["separation"].item() == pytest.approx((10.0 - 9.0) / 10.0)  # 1 short of the margin, over the margin
    assert t["locality"].item() == pytest.approx(0.0)  # the 3 untouched cells did not move
    # Past the margin the separation term is 0; a move outside the defect shows in locality only.
    far = patch_adaptation_terms(clean, clean, _grid([[2.0, 0.0], [0.0, 4.0]]), clean, mask, scale=2.0, margin=1.0)
    assert far["separation"].item() == 0.0
    assert far["locality"].item() == pytest.approx((4.0 / 2.0) / 3.0)


def test_patch_adaptation_terms_push_painted_cells_apart() -> None:
    from encoders.losses import patch_adaptation_terms

    clean = torch.zeros(1, 2, 2, 2)
    defective = torch.zeros(1, 2, 2, 2, requires_grad=True)
    mask = torch.ones(1, 1, 8, 8)
    with torch.no_grad():
        defective[0, 0] += 0.1
    t = patch_adaptation_terms(clean, clean, defective, clean, mask, scale=1.0, margin=1.0)
    t["separation"].backward()
    assert defective.grad is not None and (defective.grad[0, 0] < 0).all()  # descent moves them further away


def test_patch_adaptation_terms_reject_mismatched_shapes() -> None:
    from encoders.losses import patch_adaptation_terms

    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one shape"):
        patch_adaptation_terms(x, x, torch.zeros(2, 3, 4, 5), x, torch.zeros(2, 1, 8, 8), 1.0, 1.0)
    with pytest.raises(ValueError, match="defect_mask"):
        patch_adaptation_terms(x, x, x, x, torch.zeros(1, 1, 8, 8), 1.0, 1.0)
