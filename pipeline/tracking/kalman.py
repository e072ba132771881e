"""Constant-velocity Kalman filter on boxes, stepped by elapsed time: pure functions on numpy arrays.

The state of a track is ``(cx, cy, w, h, vcx, vcy, vw, vh)``: box centre and size in pixels and their rates
in pixels per second. The measurement is ``(cx, cy, w, h)``. Noise is proportional to the box size, as in
BoT-SORT / StrongSORT (``std_weight_position = 1/20``, ``std_weight_velocity = 1/160`` of the width for x
and w, of the height for y and h).

Time, not frame count, drives the filter: the transition and the process noise are the exact discretisation
over ``dt`` seconds of a continuous-time model (position and velocity random walks). Its noise intensities
are chosen so that one step of ``dt = 1 / nominal_fps`` has exactly the standard per-frame variances on the
diagonal, and two steps of ``dt / 2`` give the same prediction as one step of ``dt`` (exactly while the box
size is constant, since the noise is recomputed from the size at the start of each step).

Every function is batched over tracks: ``mean`` is ``(M, 8)`` float64, ``cov`` is ``(M, 8, 8)`` float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

# Chi-square 0.95 quantiles by degrees of freedom: the Mahalanobis gate (deep_sort ``chi2inv95``).
CHI2_95 = {1: 3.8415, 2: 5.9915, 3: 7.8147, 4: 9.4877, 5: 11.070, 6: 12.592, 7: 14.067, 8: 15.507, 9: 16.919}

# Smallest box side, in pixels, a predicted state may shrink to (keeps boxes valid and noise positive).
MIN_SIDE = 1.0


@dataclass(frozen=True)
class KalmanParams:
    """Noise model of the filter.

    Attributes:
        std_weight_position: position / size noise std per nominal frame, as a fraction of the box side.
        std_weight_velocity: velocity noise std per nominal frame, as a fraction of the box side per frame.
        nominal_fps: frame rate at which one prediction step has exactly the standard per-frame noise.
    """

    std_weight_position: float = 1.0 / 20.0
    std_weight_velocity: float = 1.0 / 160.0
    nominal_fps: float = 30.0

    def __post_init__(self) -> None:
        for name in ("std_weight_position", "std_weight_velocity", "nominal_fps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"KalmanParams.{name} must be a finite number > 0, got {value}")


def xyxy_to_cxcywh(xyxy: npt.ArrayLike) -> F64:
    """``(N, 4)`` xyxy boxes -> ``(N, 4)`` float64 ``(cx, cy, w, h)``."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def cxcywh_to_xyxy(cxcywh: npt.ArrayLike) -> F64:
    """``(N, 4)`` ``(cx, cy, w, h)`` -> ``(N, 4)`` float64 xyxy, sides floored at :data:`MIN_SIDE`."""
    b = np.asarray(cxcywh, np.float64).reshape(-1, 4)
    half_w = np.maximum(b[:, 2], MIN_SIDE) / 2
    half_h = np.maximum(b[:, 3], MIN_SIDE) / 2
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)


def _sizes(mean: F64) -> F64:
    """``(M, 4)`` noise scale per measured dimension: ``(w, h, w, h)``, floored at :data:`MIN_SIDE`."""
    wh = np.maximum(mean[:, 2:4], MIN_SIDE)
    return np.concatenate([wh, wh], axis=1)


def initiate(measurement: npt.ArrayLike, params: KalmanParams = KalmanParams()) -> tuple[F64, F64]:
    """New tracks from ``(N, 4)`` ``(cx, cy, w, h)`` measurements, at rest with an uncertain velocity.

    Returns:
        mean ``(N, 8)`` and covariance ``(N, 8, 8)``; position std ``2 * std_weight_position * side``,
        velocity std ``10 * std_weight_velocity * side`` per nominal frame (converted to pixels per second).
    """
    z = np.asarray(measurement, np.float64).reshape(-1, 4)
    mean = np.concatenate([z, np.zeros_like(z)], axis=1)
    s = _sizes(mean)
    std = np.concatenate([2 * params.std_weight_position * s,
                          10 * params.std_weight_velocity * s * params.nominal_fps], axis=1)
    cov = np.zeros((len(z), 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std**2
    return mean, cov


def transition(dt: float) -> F64:
    """``(8, 8)`` constant-velocity transition over ``dt`` seconds."""
    f = np.eye(8)
    f[np.arange(4), np.arange(4) + 4] = dt
    return f


def process_noise(mean: F64, dt: npt.ArrayLike, params: KalmanParams = KalmanParams()) -> F64:
    """``(M, 8, 8)`` process noise over ``dt`` seconds (scalar or ``(M,)``) for states ``mean`` ``(M, 8)``.

    With ``n = dt * nominal_fps`` nominal frames and per-frame variances ``qp = (std_weight_position * side)^2``,
    ``qv = (std_weight_velocity * side)^2`` (pixels per frame), the exact discretisation of position and
    velocity random walks is, per dimension::

        Q_pp = n * (qp - qv / 3) + qv * n^3 / 3     (px^2)
        Q_pv = qv * fps * n^2 / 2                  (px^2 / s)
        Q_vv = qv * fps^2 * n                      ((px / s)^2)

    so that ``n = 1`` gives ``Q_pp = qp`` and ``Q_vv = qv`` (in pixels per frame), the standard values.
    """
    fps = params.nominal_fps
    n = np.broadcast_to(np.asarray(dt, np.float64) * fps, (len(mean),))[:, None]
    s = _sizes(mean)
    qp = (params.std_weight_position * s) ** 2
    qv = (params.std_weight_velocity * s) ** 2
    q = np.zeros((len(mean), 8, 8))
    i = np.arange(4)
    q[:, i, i] = n * np.maximum(qp - qv / 3, 0.0) + qv * n**3 / 3
    q[:, i, i + 4] = q[:, i + 4, i] = qv * fps * n**2 / 2
    q[:, i + 4, i + 4] = qv * fps**2 * n
    return q


def predict(mean: F64, cov: F64, dt: npt.ArrayLike, params: KalmanParams = KalmanParams()) -> tuple[F64, F64]:
    """Step ``M`` tracks forward by ``dt`` seconds (scalar, or ``(M,)`` per track; negative is treated as 0).

    Returns:
        the predicted mean ``(M, 8)`` and covariance ``(M, 8, 8)``; new arrays, the inputs are not changed.
    """
    mean = np.asarray(mean, np.float64).reshape(-1, 8)
    cov = np.asarray(cov, np.float64).reshape(-1, 8, 8)
    dts = np.maximum(np.broadcast_to(np.asarray(dt, np.float64), (len(mean),)), 0.0)
    q = process_noise(mean, dts, params)
    f = np.broadcast_to(np.eye(8), (len(mean), 8, 8)).copy()
    i = np.arange(4)
    f[:, i, i + 4] = dts[:, None]
    new_mean = np.einsum("mij,mj->mi", f, mean)
    new_cov = f @ cov @ f.transpose(0, 2, 1) + q
    return new_mean, new_cov


def measurement_noise(mean: F64, params: KalmanParams = KalmanParams(),
                      confidence: npt.ArrayLike | None = None) -> F64:
    """``(M, 4, 4)`` measurement noise: std ``std_weight_position * side``.

    With ``confidence`` ``(M,)`` in [0, 1], the covariance is scaled by ``1 - confidence`` (StrongSORT's
    NSA Kalman filter: confident detections are trusted more), floored at 5% so it stays positive.
    """
    r = np.zeros((len(mean), 4, 4))
    i = np.arange(4)
    r[:, i, i] = (params.std_weight_position * _sizes(mean)) ** 2
    if confidence is not None:
        c = np.clip(np.asarray(confidence, np.float64).reshape(-1), 0.0, 0.95)
        r *= (1.0 - c)[:, None, None]
    return r


def project(mean: F64, cov: F64, params: KalmanParams = KalmanParams(),
            confidence: npt.ArrayLike | None = None) -> tuple[F64, F64]:
    """States into measurement space: mean ``(M, 4)`` and innovation covariance ``(M, 4, 4)``."""
    mean = np.asarray(mean, np.float64).reshape(-1, 8)
    cov = np.asarray(cov, np.float64).reshape(-1, 8, 8)
    return mean[:, :4].copy(), cov[:, :4, :4] + measurement_noise(mean, params, confidence)


def update(mean: F64, cov: F64, measurement: npt.ArrayLike, params: KalmanParams = KalmanParams(),
           confidence: npt.ArrayLike | None = None) -> tuple[F64, F64]:
    """Correct ``M`` states with one ``(cx, cy, w, h)`` measurement each (``(M, 4)``).

    ``confidence`` ``(M,)`` optionally scales the measurement noise (see :func:`measurement_noise`).

    Returns:
        the corrected mean ``(M, 8)`` and covariance ``(M, 8, 8)``.
    """
    mean = np.asarray(mean, np.float64).reshape(-1, 8)
    cov = np.asarray(cov, np.float64).reshape(-1, 8, 8)
    z = np.asarray(measurement, np.float64).reshape(-1, 4)
    if len(z) != len(mean):
        raise ValueError(f"update: {len(mean)} states but {len(z)} measurements")
    z_mean, s = project(mean, cov, params, confidence)
    pht = cov[:, :, :4]  # P H^T, (M, 8, 4)
    # K = P H^T S^-1, solved as S K^T = H P (S symmetric).
    gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)
    innovation = z - z_mean
    new_mean = mean + np.einsum("mij,mj->mi", gain, innovation)
    new_cov = cov - gain @ s @ gain.transpose(0, 2, 1)
    return new_mean, (new_cov + new_cov.transpose(0, 2, 1)) / 2


def mahalanobis_sq(mean: F64, cov: F64, measurements: npt.ArrayLike,
                   params: KalmanParams = KalmanParams()) -> F64:
    """Squared Mahalanobis distance of ``(N, 4)`` ``(cx, cy, w, h)`` measurements to ``M`` projected states.

    Returns:
        ``(M, N)`` float64; gate with :data:`CHI2_95` ``[4]`` (9.4877) for a 95% acceptance region.
    """
    z = np.asarray(measurements, np.float64).reshape(-1, 4)
    mean = np.asarray(mean, np.float64).reshape(-1, 8)
    if len(mean) == 0 or len(z) == 0:
        return np.zeros((len(mean), len(z)))
    z_mean, s = project(mean, cov, params)
    s_inv = np.linalg.inv(s)
    d = z[None, :, :] - z_mean[:, None, :]  # (M, N, 4)
    return np.einsum("mni,mij,mnj->mn", d, s_inv, d)


def warp(mean: F64, cov: F64, affine: npt.ArrayLike) -> tuple[F64, F64]:
    """Apply a ``(2, 3)`` affine image warp (camera motion, previous -> current frame) to ``M`` states.

    Centre positions get the full warp and centre velocities its linear part; sizes and their rates are
    scaled by the warp's isotropic scale ``sqrt(|det A|)``, so boxes stay upright and positive.
    """
    a = np.asarray(affine, np.float64).reshape(2, 3)
    mean = np.asarray(mean, np.float64).reshape(-1, 8)
    cov = np.asarray(cov, np.float64).reshape(-1, 8, 8)
    lin = a[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(lin))))
    t = np.zeros((8, 8))
    t[0:2, 0:2] = lin
    t[2:4, 2:4] = scale * np.eye(2)
    t[4:6, 4:6] = lin
    t[6:8, 6:8] = scale * np.eye(2)
    new_mean = mean @ t.T
    new_mean[:, 0:2] += a[:, 2]
    return new_mean, t @ cov @ t.T
