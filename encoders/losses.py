"""Metric-learning losses for training the twin encoder: contrastive, triplet (batch-hard, soft, semi-hard),
NT-Xent and supervised contrastive.

Pure functions of tensors. Embeddings are ``(N, D)`` float tensors (``EmbeddingNet`` already returns them with
unit L2 norm; the cosine-similarity losses normalise again, so raw features work too) and labels are ``(N,)``
integer class ids. Every loss returns a 0-dim tensor: a mean over the terms that are defined for the batch.
Distances are computed without ``torch.cdist`` so the same maths can be exported to ONNX.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

# Added under the square root only where the squared distance is exactly 0, so that d(sqrt)/dx stays finite.
_SQRT_EPS = 1e-12

LABEL_LOSSES = ("triplet_batch_hard", "triplet_soft", "triplet_semi_hard", "supcon")


def _check_embeddings(emb: Tensor, name: str = "emb") -> None:
    if emb.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {tuple(emb.shape)}")


def _check_labels(emb: Tensor, labels: Tensor) -> None:
    _check_embeddings(emb)
    if labels.shape != (emb.shape[0],):
        raise ValueError(f"labels: expected shape ({emb.shape[0]},) to match emb {tuple(emb.shape)}, "
                         f"got {tuple(labels.shape)}")


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    _check_embeddings(a, names[0])
    if b.shape != a.shape:
        raise ValueError(f"{names[1]}: expected shape {tuple(a.shape)} (same as {names[0]}), got {tuple(b.shape)}")


def _safe_sqrt(squared: Tensor) -> Tensor:
    """Element-wise sqrt with a zero (not NaN) gradient where the input is exactly 0."""
    zero = (squared == 0).to(squared.dtype)
    return torch.sqrt(squared + zero * _SQRT_EPS) * (1.0 - zero)


def _zero_loss(emb: Tensor) -> Tensor:
    # A 0 that is still part of the graph, so ``loss.backward()`` works on a batch with no valid terms.
    return emb.sum() * 0.0


def pairwise_distances(x: Tensor, squared: bool = False) -> Tensor:
    """Euclidean distances between all rows of ``x``.

    Args:
        x: ``(N, D)`` float embeddings.
        squared: return squared distances instead.

    Returns:
        ``(N, N)`` float, ``out[i, j] = ||x_i - x_j||`` (squared if asked); the diagonal is exactly 0.

    Uses ``||a||^2 - 2 a.b + ||b||^2`` (matrix products only, ONNX-friendly), clamped at 0 against rounding;
    the square root gets its epsilon only at exact zeros, so identical rows have finite (zero) gradients.
    """
    _check_embeddings(x, "x")
    sq_norms = (x * x).sum(dim=1)
    d2 = sq_norms.unsqueeze(1) - 2.0 * (x @ x.t()) + sq_norms.unsqueeze(0)
    off_diagonal = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    d2 = torch.clamp(d2, min=0.0) * off_diagonal
    return d2 if squared else _safe_sqrt(d2)


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss on pairs (Hadsell, Chopra and LeCun 2006, "Dimensionality Reduction by Learning an
    Invariant Mapping").

    ``mean_i[ same_i * d_i^2 + (1 - same_i) * max(0, margin - d_i)^2 ]`` with ``d_i = ||a_i - b_i||_2``.
    The paper's 1/2 factors are dropped (they only rescale the loss and its gradient by 2).

    Args:
        a, b: ``(N, D)`` embeddings of the two sides of each pair.
        same: ``(N,)`` bool or float, 1 where the pair is the same identity / class, 0 otherwise.
        margin: distance beyond which a different pair costs nothing (same units as ``d``).

    Returns:
        0-dim float tensor.
    """
    _check_pair(a, b, ("a", "b"))
    if same.shape != (a.shape[0],):
        raise ValueError(f"same: expected shape ({a.shape[0]},), got {tuple(same.shape)}")
    y = same.to(a.dtype)
    d2 = ((a - b) ** 2).sum(dim=1)
    d = _safe_sqrt(d2)
    return (y * d2 + (1.0 - y) * torch.relu(margin - d) ** 2).mean()


def _label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(positives, negatives)``, both ``(N, N)`` bool: same label excluding self, and different label."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def batch_hard_triplet_loss(emb: Tensor, labels: Tensor, margin: float = 0.2, soft: bool = False) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss for Person
    Re-Identification").

    For each anchor ``a``: the hardest positive ``max_p d(a, p)`` (same label, ``p != a``) and the hardest
    negative ``min_n d(a, n)`` (different label), with Euclidean ``d``. Per anchor the loss is
    ``relu(d_ap - d_an + margin)``, or with ``soft=True`` the paper's soft margin ``softplus(d_ap - d_an)``
    (``margin`` is then unused). The result is the mean over anchors that have at least one positive and one
    negative; a batch with no such anchor gives 0 (still connected to ``emb`` for ``backward``).

    Args:
        emb: ``(N, D)`` float embeddings.
        labels: ``(N,)`` integer class ids.

    Returns:
        0-dim float tensor.
    """
    _check_labels(emb, labels)
    dist = pairwise_distances(emb)
    pos, neg = _label_masks(labels)
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return _zero_loss(emb)
    # Distances are >= 0, so zeroing non-positives leaves the row maximum on a positive.
    hardest_pos = (dist * pos.to(dist.dtype)).max(dim=1).values
    hardest_neg = torch.where(neg, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
    gap = hardest_pos[valid] - hardest_neg[valid]
    per_anchor = F.softplus(gap) if soft else torch.relu(gap + margin)
    return per_anchor.mean()


def semi_hard_triplet_loss(emb: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """Semi-hard triplet loss (Schroff, Kalenichenko and Philbin 2015, "FaceNet"), in the form of TensorFlow
    Addons' ``triplet_semihard_loss``.

    Every pair ``(a, p)`` with the same label and ``p != a`` is a term. Its negative is the semi-hard one:
    the closest ``n`` (different label) that is still farther than the positive, ``min d_an`` subject to
    ``d_an > d_ap``. When no negative is farther than the positive, the fallback is the anchor's farthest
    negative (``max d_an``), as in TensorFlow Addons. The term is ``relu(d_ap - d_an + margin)``; the result
    is their mean. Unlike TensorFlow Addons, pairs whose anchor has no negative at all are left out, and a
    batch without any term gives 0 (still connected to ``emb``).

    Args:
        emb: ``(N, D)`` float embeddings.
        labels: ``(N,)`` integer class ids.

    Returns:
        0-dim float tensor. Builds ``(N, N, N)`` intermediates.
    """
    _check_labels(emb, labels)
    dist = pairwise_distances(emb)
    pos, neg = _label_masks(labels)
    valid = pos & neg.any(dim=1, keepdim=True)
    if not bool(valid.any()):
        return _zero_loss(emb)
    # [a, p, n]: n is a negative of a and d(a, n) > d(a, p).
    d_an = dist.unsqueeze(1)
    semi = neg.unsqueeze(1) & (d_an > dist.unsqueeze(2))
    inf = torch.full_like(dist, float("inf"))
    closest_semi = torch.where(semi, d_an, inf.unsqueeze(1)).min(dim=2).values
    farthest_neg = torch.where(neg, dist, -inf).max(dim=1, keepdim=True).values
    d_neg = torch.where(semi.any(dim=2), closest_semi, farthest_neg)
    return torch.relu(dist[valid] - d_neg[valid] + margin).mean()


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent, normalised-temperature cross-entropy (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", SimCLR).

    The two views make ``2N`` samples; for sample ``k`` the positive is the other view of the same index and the
    other ``2N - 2`` samples are negatives. With cosine similarity ``s`` (rows L2-normalised here)
    ``l_k = -log( exp(s_k,pos / t) / sum_{j != k} exp(s_kj / t) )``, and the loss is the mean of ``l_k`` over all
    ``2N`` samples.

    Args:
        z1, z2: ``(N, D)`` embeddings of two views; row ``i`` of each comes from the same input.
        temperature: ``t`` > 0.

    Returns:
        0-dim float tensor.
    """
    _check_pair(z1, z2, ("z1", "z2"))
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), p=2.0, dim=1)
    logits = (z @ z.t()) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, targets)


def supcon_loss(emb: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss, the ``L_out`` form (Khosla et al. 2020, "Supervised Contrastive Learning").

    With cosine similarity ``s`` (rows L2-normalised here), for each anchor ``i`` with positives
    ``P(i)`` (same label, not ``i``):
    ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) )``.
    The loss is the mean of ``l_i`` over anchors with ``|P(i)| > 0``; without the reference code's
    ``t / base_temperature`` rescaling. A batch where no anchor has a positive gives 0 (connected to ``emb``).

    Args:
        emb: ``(N, D)`` embeddings (one view per row; stack several views with repeated labels).
        labels: ``(N,)`` integer class ids.
        temperature: ``t`` > 0.

    Returns:
        0-dim float tensor.
    """
    _check_labels(emb, labels)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pos, _ = _label_masks(labels)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return _zero_loss(emb)
    z = F.normalize(emb, p=2.0, dim=1)
    logits = (z @ z.t()) / temperature
    self_mask = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = torch.where(pos, logits - log_denominator, torch.zeros_like(logits))
    per_anchor = -log_prob.sum(dim=1)[has_pos] / n_pos[has_pos].to(logits.dtype)
    return per_anchor.mean()


def make_loss(name: str, margin: float, temperature: float) -> Callable[[Tensor, Tensor], Tensor]:
    """A label-based loss as ``loss(embeddings (N, D), labels (N,)) -> 0-dim tensor``.

    ``name`` is one of ``triplet_batch_hard`` and ``triplet_semi_hard`` (both use ``margin``), ``triplet_soft``
    (batch-hard with the soft margin, no ``margin``) or ``supcon`` (uses ``temperature``). ``contrastive_loss``
    and ``nt_xent_loss`` take pairs / two views rather than labels, so call them directly.
    Raises ``ValueError`` naming the valid options for any other name.
    """
    if name == "triplet_batch_hard":
        return lambda emb, labels: batch_hard_triplet_loss(emb, labels, margin=margin)
    if name == "triplet_soft":
        return lambda emb, labels: batch_hard_triplet_loss(emb, labels, margin=margin, soft=True)
    if name == "triplet_semi_hard":
        return lambda emb, labels: semi_hard_triplet_loss(emb, labels, margin=margin)
    if name == "supcon":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return lambda emb, labels: supcon_loss(emb, labels, temperature=temperature)
    raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LABEL_LOSSES)} "
                     "(contrastive_loss and nt_xent_loss are called directly)")


def patch_adaptation_terms(clean: Tensor, jittered: Tensor, defective: Tensor, anchor: Tensor, defect_mask: Tensor,
                           scale: float, margin: float, inside_fraction: float = 0.25) -> dict[str, Tensor]:
    """The terms of good-only patch adaptation (:mod:`encoders.adapt`), each a 0-dim tensor.

    Args:
        clean, jittered, defective: ``(B, C, h, w)`` patch features of a batch of good crops, of photometrically
            jittered copies, and of copies with one synthetic defect painted on each.
        anchor: ``(B, C, h, w)`` features of the clean crops from the frozen pretrained trunk.
        defect_mask: ``(B, 1, H, W)`` float, 1 where the defect was painted (the crops' pixels).
        scale: squared feature norm the squared distances are divided by (keeps the terms unit-free).
        margin: relative squared distance a defective patch must keep from its clean self.
        inside_fraction: a patch counts as inside the defect when this share of its cell is painted.

    Returns ``invariance`` (jittered vs clean), ``separation`` (hinge: patches inside the defect closer than
    ``margin`` to their clean selves, as a fraction of the margin), ``locality`` (patches the defect does not
    touch vs their clean selves: keeps the response from spreading beyond the defect) and ``anchor`` (clean vs
    pretrained): all relative squared distances averaged over the patches they concern (0 when there are none).
    """
    if not (clean.shape == jittered.shape == defective.shape == anchor.shape) or clean.dim() != 4:
        raise ValueError(f"patch features must all be (B, C, h, w) of one shape; got {tuple(clean.shape)}, "
                         f"{tuple(jittered.shape)}, {tuple(defective.shape)}, {tuple(anchor.shape)}")
    if defect_mask.dim() != 4 or defect_mask.shape[:2] != (clean.shape[0], 1):
        raise ValueError(f"defect_mask must be ({clean.shape[0]}, 1, H, W); got {tuple(defect_mask.shape)}")
    if scale <= 0 or margin <= 0:
        raise ValueError(f"scale and margin must be > 0; got {scale}, {margin}")
    grid = (int(clean.shape[2]), int(clean.shape[3]))
    inside = (F.adaptive_avg_pool2d(defect_mask, grid) > inside_fraction).to(clean.dtype)[:, 0]
    untouched = (F.adaptive_max_pool2d(defect_mask, grid) == 0).to(clean.dtype)[:, 0]
    moved = (defective - clean).pow(2).sum(1) / scale
    return {
        "invariance": ((jittered - clean).pow(2).sum(1) / scale).mean(),
        "separation": (F.relu(margin - moved) * inside).sum() / inside.sum().clamp(min=1.0) / margin,
        "locality": (moved * untouched).sum() / untouched.sum().clamp(min=1.0),
        "anchor": ((clean - anchor).pow(2).sum(1) / scale).mean(),
    }
