"""Learned whitening: a linear head for an embedding network, fitted in closed form on labelled images.

Cosine distances between raw pooled CNN features are dominated by what every image shares (GeM features are all
positive, so they sit in one corner of the space) and by variation within an identity (pose, expression,
glasses). Within-class covariance normalisation (WCCN; Hatch, Kajarekar and Stolcke 2006), the supervised
whitening that Radenović, Tolias and Chum (2018, "Fine-tuning CNN Image Retrieval with No Human Annotation")
learn on top of GeM pooling, centres the features on the training mean and whitens them with the within-class
covariance, so that cosine distances weigh the directions that separate identities. Shrinking the covariance
towards a scaled identity keeps the estimate stable with few images per class.

The fitted map ``z = (h - mean) @ projection`` (``h`` the head's output before L2 normalisation) is folded into
the network's linear head, so a whitened encoder exports to ONNX like any other.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from encoders.data import to_tensor
from encoders.models import EmbeddingNet


def fit_whitening(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and within-class whitening projection of labelled feature vectors.

    With class means ``m_c`` and ``S_w = 1/N sum_c sum_{i in c} (x_i - m_c)(x_i - m_c)^T``, the projection is
    ``P = (S_w + shrinkage * tr(S_w) / D * I)^(-1/2)`` (symmetric). ``shrinkage`` = 0 whitens fully (``S_w``
    must then be invertible); larger values move ``P`` towards a scaled identity, i.e. plain centring.

    Args:
        features: ``(N, D)`` float feature vectors.
        labels: ``(N,)`` integer class ids: at least two classes, and at least one class with two samples.
        shrinkage: >= 0, in units of the mean within-class variance ``tr(S_w) / D``.

    Returns:
        ``mean`` float64 ``(D,)`` (of all samples) and ``projection`` float64 ``(D, D)``; whitened features are
        ``(x - mean) @ projection``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,); got {x.shape} and {y.shape}")
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        raise ValueError(f"whitening needs two or more classes and a class with two or more samples; got "
                         f"{len(classes)} classes of at most {counts.max() if counts.size else 0} samples")
    within = np.concatenate([x[y == c] - x[y == c].mean(axis=0) for c in classes])
    s_w = within.T @ within / len(x)
    d = x.shape[1]
    eigenvalues, vectors = np.linalg.eigh(s_w + shrinkage * np.trace(s_w) / d * np.eye(d))
    if eigenvalues.min() <= 1e-10 * max(float(eigenvalues.max()), 0.0):
        raise ValueError("the within-class covariance is singular (fewer independent samples than dimensions); "
                         "use shrinkage > 0")
    return x.mean(axis=0), (vectors * eigenvalues ** -0.5) @ vectors.T


class Images(Protocol):
    """Images read one at a time by index: a list, or a lazy reader of a data set."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> np.ndarray: ...


@torch.no_grad()
def head_outputs(model: EmbeddingNet, images: Images | np.ndarray, batch: int = 64,
                 mirror: bool = False) -> np.ndarray:
    """``model``'s embeddings before L2 normalisation for uint8 ``(H, W, C)`` images (an array ``(N, H, W, C)``
    or any sequence of images, read ``batch`` at a time), each mirrored left-right first with ``mirror``:
    float64 ``(N, D)``."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch):
        chunk = np.stack([images[i] for i in range(start, min(start + batch, len(images)))])
        if mirror:
            chunk = np.ascontiguousarray(chunk[:, :, ::-1])
        out.append(model.unnormalised(to_tensor(chunk).to(device)).double().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def whiten_head(model: EmbeddingNet, images: Images | np.ndarray, labels: np.ndarray,
                shrinkage: float = 1.0, mirror: bool = True) -> EmbeddingNet:
    """Fit :func:`fit_whitening` on ``model``'s head outputs for ``images`` and fold it into the head, in place.

    The head ``h = W x + b`` (or the identity) becomes one ``nn.Linear`` computing ``(h - mean) @ P``; the
    embedding size does not change. With ``mirror``, each image's mirror image is another sample of its class.

    Args:
        model: an :class:`EmbeddingNet` (returned, in eval mode, with its new head).
        images: uint8 ``(H, W, C)`` images at the model's input size: an ``(N, H, W, C)`` array or a sequence.
        labels: ``(N,)`` integer class ids.
    """
    labels = np.asarray(labels)
    if len(images) != len(labels) or (isinstance(images, np.ndarray) and images.ndim != 4):
        shape = images.shape if isinstance(images, np.ndarray) else (len(images),)
        raise ValueError(f"images must be (N, H, W, C) with one label each; got {shape} and "
                         f"{labels.shape} labels")
    feats = head_outputs(model, images)
    if mirror:
        feats = np.concatenate([feats, head_outputs(model, images, mirror=True)])
        labels = np.concatenate([labels, labels])
    mean, projection = fit_whitening(feats, labels, shrinkage)
    old = model.head
    d_in = int(old.in_features) if isinstance(old, nn.Linear) else feats.shape[1]
    w_old = old.weight.double().cpu().numpy() if isinstance(old, nn.Linear) else np.eye(d_in)
    b_old = (old.bias.double().cpu().numpy() if isinstance(old, nn.Linear) and old.bias is not None
             else np.zeros(w_old.shape[0]))
    head = nn.Linear(d_in, projection.shape[1])
    # (W x + b - mean) @ P = x @ (P^T W)^T + (b - mean) @ P
    head.weight.copy_(torch.from_numpy(projection.T @ w_old))
    head.bias.copy_(torch.from_numpy((b_old - mean) @ projection))
    model.head = head.to(next(model.parameters()).device)
    return model.eval()
