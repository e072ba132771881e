"""Learned whitening: the closed form checked by hand, and the head it folds into checked against the maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from encoders.backbones import SmallConvNet
from encoders.data import ImageFolderClasses
from encoders.export import export_onnx
from encoders.models import EmbeddingNet
from encoders.whiten import fit_whitening, head_outputs, whiten_head

# Class 0 at (+-1, 0), class 1 at (10, +-2): within-class deviations (+-1, 0) and (0, +-2).
POINTS = np.array([[1.0, 0.0], [-1.0, 0.0], [10.0, 2.0], [10.0, -2.0]])
LABELS = np.array([0, 0, 1, 1])


def test_fit_whitening_by_hand() -> None:
    # S_w = 1/4 diag(1 + 1, 4 + 4) = diag(0.5, 2); tr(S_w) / D = 1.25
    mean, p = fit_whitening(POINTS, LABELS, shrinkage=0.0)
    np.testing.assert_allclose(mean, [5.0, 0.0])
    np.testing.assert_allclose(p, np.diag([0.5 ** -0.5, 2.0 ** -0.5]), atol=1e-12)
    _, shrunk = fit_whitening(POINTS, LABELS, shrinkage=1.0)  # diag(0.5 + 1.25, 2 + 1.25) ** -0.5
    np.testing.assert_allclose(shrunk, np.diag([1.75 ** -0.5, 3.25 ** -0.5]), atol=1e-12)


def test_full_whitening_gives_unit_within_class_covariance() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, 5))
    x = rng.normal(size=(200, 5)) @ mix + np.repeat(rng.normal(size=(10, 5)) * 3, 20, axis=0)
    y = np.repeat(np.arange(10), 20)
    mean, p = fit_whitening(x, y, shrinkage=0.0)
    z = (x - mean) @ p
    within = np.concatenate([z[y == c] - z[y == c].mean(axis=0) for c in range(10)])
    np.testing.assert_allclose(within.T @ within / len(z), np.eye(5), atol=1e-9)
    np.testing.assert_allclose(p, p.T, atol=1e-12)


@pytest.mark.parametrize(("features", "labels", "shrinkage", "message"), [
    (POINTS, np.zeros(4, int), 1.0, "two or more classes"),
    (POINTS, np.arange(4), 1.0, "two or more samples"),
    (POINTS, LABELS[:3], 1.0, r"\(N, D\)"),
    (POINTS, LABELS, -0.1, "shrinkage must be >= 0"),
    (np.array([[1.0, 0.0], [-1.0, 0.0], [10.0, 0.0], [12.0, 0.0]]), LABELS, 0.0, "singular"),
])
def test_fit_whitening_rejects_bad_input(features: np.ndarray, labels: np.ndarray, shrinkage: float,
                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_whitening(features, labels, shrinkage)


@pytest.mark.parametrize("embedding_dim", [0, 6])
def test_whiten_head_folds_the_map_into_the_head(shapes_dataset: Path, tmp_path: Path, embedding_dim: int) -> None:
    torch.manual_seed(0)
    net = SmallConvNet(in_channels=1, widths=(4, 8))
    model = EmbeddingNet(net, net.out_channels, pooling="gem", embedding_dim=embedding_dim).eval()
    data = ImageFolderClasses(shapes_dataset, grayscale=True, size=16)
    images = data.load_batch(range(len(data)))
    before = head_outputs(model, images)
    mirrored = head_outputs(model, np.ascontiguousarray(images[:, :, ::-1]))
    mean, p = fit_whitening(np.concatenate([before, mirrored]), np.tile(data.labels, 2), shrinkage=0.5)

    whiten_head(model, images, data.labels, shrinkage=0.5)

    assert model.embedding_dim == before.shape[1] == (embedding_dim or 8)
    expected = (before - mean) @ p
    np.testing.assert_allclose(head_outputs(model, images), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        z = model(torch.rand(3, 3, 16, 16))
    assert isinstance(z, torch.Tensor)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert export_onnx(model, tmp_path / "whitened.onnx", 16, backbone="small-cnn:whitened").parity_max_abs <= 1e-4


def test_whiten_head_without_mirror_whitens_the_training_images(shapes_dataset: Path) -> None:
    torch.manual_seed(1)
    net = SmallConvNet(in_channels=1, widths=(4, 8))
    model = EmbeddingNet(net, net.out_channels, pooling="avg", embedding_dim=0).eval()
    data = ImageFolderClasses(shapes_dataset, grayscale=True, size=16)
    images = data.load_batch(range(len(data)))
    whiten_head(model, images, data.labels, shrinkage=0.0, mirror=False)
    z = head_outputs(model, images)
    within = np.concatenate([z[data.labels == c] - z[data.labels == c].mean(axis=0) for c in range(6)])
    np.testing.assert_allclose(within.T @ within / len(z), np.eye(8), atol=1e-3)
    np.testing.assert_allclose(z.mean(axis=0), np.zeros(8), atol=1e-3)
    with pytest.raises(ValueError, match="one label each"):
        whiten_head(model, images, data.labels[:-1])


def test_unnormalised_is_the_embedding_before_normalisation() -> None:
    torch.manual_seed(2)
    net = SmallConvNet(in_channels=3, widths=(4, 8))
    model = EmbeddingNet(net, net.out_channels, pooling="gem", embedding_dim=5).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(model.unnormalised(x), dim=1), model(x))
