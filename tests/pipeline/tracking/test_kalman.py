from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking import kalman
from pipeline.tracking.kalman import CHI2_95, KalmanParams
from pipeline.tracking.matching import GATED, gate_mahalanobis

# fps 10: one nominal frame is 0.1 s. Box 20 x 40 px: noise scales with w for x / w, with h for y / h.
P = KalmanParams(std_weight_position=0.05, std_weight_velocity=0.00625, nominal_fps=10.0)
W, H = 20.0, 40.0
SIDES = np.array([W, H, W, H])


def state(cx: float = 100.0, cy: float = 50.0, vx: float = 0.0, vy: float = 0.0,
          vw: float = 0.0, vh: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    mean, cov = kalman.initiate([[cx, cy, W, H]], P)
    mean[0, 4:] = [vx, vy, vw, vh]
    return mean, cov


def test_initiate_by_hand() -> None:
    mean, cov = kalman.initiate([[100.0, 50.0, W, H]], P)
    np.testing.assert_allclose(mean, [[100, 50, W, H, 0, 0, 0, 0]])
    # position std 2 * 0.05 * side; velocity std 10 * 0.00625 * side per frame = * 10 fps per second
    std = np.concatenate([2 * 0.05 * SIDES, 10 * 0.00625 * SIDES * 10.0])
    np.testing.assert_allclose(cov[0], np.diag(std**2))


def test_process_noise_at_nominal_fps_is_the_standard_per_frame_noise() -> None:
    mean, _ = state()
    q = kalman.process_noise(mean, 0.1, P)[0]
    np.testing.assert_allclose(np.diag(q)[:4], (0.05 * SIDES) ** 2)  # px^2
    np.testing.assert_allclose(np.diag(q)[4:] / 10.0**2, (0.00625 * SIDES) ** 2)  # (px / frame)^2
    # the position-velocity covariance a continuous-time model adds: qv * fps * n^2 / 2
    np.testing.assert_allclose(q[0, 4], (0.00625 * W) ** 2 * 10.0 / 2)


def test_predict_by_hand() -> None:
    mean, cov = state(vx=30.0, vy=-10.0)
    new_mean, new_cov = kalman.predict(mean, cov, 0.1, P)
    np.testing.assert_allclose(new_mean, [[103.0, 49.0, W, H, 30.0, -10.0, 0, 0]])
    # x: P_pp' = P_pp + dt^2 P_vv + Q_pp (P_pv = 0 at initiation)
    p_pp, p_vv = (2 * 0.05 * W) ** 2, (10 * 0.00625 * W * 10.0) ** 2
    q = kalman.process_noise(mean, 0.1, P)[0]
    assert new_cov[0, 0, 0] == pytest.approx(p_pp + 0.01 * p_vv + q[0, 0])
    assert new_cov[0, 0, 4] == pytest.approx(0.1 * p_vv + q[0, 4])
    assert new_cov[0, 4, 4] == pytest.approx(p_vv + q[4, 4])


def test_update_by_hand() -> None:
    mean, cov = state()
    z = np.array([[104.0, 50.0, W, H]])
    new_mean, new_cov = kalman.update(mean, cov, z, P)
    # x is uncorrelated with the rest at initiation: scalar Kalman gain K = P / (P + R)
    p, r = (2 * 0.05 * W) ** 2, (0.05 * W) ** 2
    gain = p / (p + r)
    assert new_mean[0, 0] == pytest.approx(100.0 + gain * 4.0)
    assert new_mean[0, 1] == pytest.approx(50.0)
    assert new_cov[0, 0, 0] == pytest.approx((1 - gain) * p)


def test_nsa_trusts_confident_detections_more() -> None:
    mean, cov = state()
    z = np.array([[104.0, 50.0, W, H]])
    low, _ = kalman.update(mean, cov, z, P, confidence=[0.2])
    high, _ = kalman.update(mean, cov, z, P, confidence=[0.9])
    plain, _ = kalman.update(mean, cov, z, P)
    assert plain[0, 0] < low[0, 0] < high[0, 0] < 104.0


def test_two_half_steps_equal_one_step() -> None:
    mean, cov = state(vx=30.0, vy=-10.0)
    one = kalman.predict(mean, cov, 0.2, P)
    two = kalman.predict(*kalman.predict(mean, cov, 0.1, P), 0.1, P)
    np.testing.assert_allclose(two[0], one[0])
    np.testing.assert_allclose(two[1], one[1], rtol=1e-12)
    # With a growing box the noise is re-evaluated at the new size: equal to first order only.
    mean, cov = state(vx=30.0, vw=5.0, vh=10.0)
    one = kalman.predict(mean, cov, 0.2, P)
    two = kalman.predict(*kalman.predict(mean, cov, 0.1, P), 0.1, P)
    np.testing.assert_allclose(two[0], one[0])
    np.testing.assert_allclose(two[1], one[1], rtol=0.05)


def test_longer_gaps_are_more_uncertain_and_dt_zero_changes_nothing() -> None:
    mean, cov = state(vx=30.0)
    same = kalman.predict(mean, cov, 0.0, P)
    np.testing.assert_allclose(same[0], mean)
    np.testing.assert_allclose(same[1], cov)
    np.testing.assert_allclose(kalman.predict(mean, cov, -1.0, P)[1], cov)  # out-of-order: no step back
    stds = [np.sqrt(kalman.predict(mean, cov, dt, P)[1][0, 0, 0]) for dt in (0.1, 0.5, 2.0)]
    assert stds[0] < stds[1] < stds[2]


def test_predict_is_batched_with_per_track_dt() -> None:
    a, ca = state(vx=30.0)
    b, cb = state(cx=10.0, vy=5.0, vh=2.0)
    mean, cov = kalman.predict(np.concatenate([a, b]), np.concatenate([ca, cb]), np.array([0.1, 0.7]), P)
    np.testing.assert_allclose(mean[:1], kalman.predict(a, ca, 0.1, P)[0])
    np.testing.assert_allclose(cov[1:], kalman.predict(b, cb, 0.7, P)[1])


def test_mahalanobis_by_hand_and_chi2_gate() -> None:
    mean, cov = state()
    s_x = (2 * 0.05 * W) ** 2 + (0.05 * W) ** 2  # innovation variance of cx
    edge = np.sqrt(CHI2_95[4] * s_x)
    z = np.array([[100.0 + 3.0, 50.0, W, H], [100.0 + edge - 0.01, 50.0, W, H], [100.0 + edge + 0.01, 50.0, W, H]])
    d2 = kalman.mahalanobis_sq(mean, cov, z, P)
    assert d2.shape == (1, 3)
    assert d2[0, 0] == pytest.approx(9.0 / s_x)
    gated = gate_mahalanobis(np.zeros((1, 3), np.float32), d2)
    assert gated.tolist() == [[0.0, 0.0, GATED]]
    assert CHI2_95[4] == 9.4877


def test_cxcywh_round_trip_and_min_side() -> None:
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(kalman.xyxy_to_cxcywh(xyxy), [[20, 40, 20, 40]])
    np.testing.assert_allclose(kalman.cxcywh_to_xyxy(kalman.xyxy_to_cxcywh(xyxy)), xyxy)
    box = kalman.cxcywh_to_xyxy([[5.0, 5.0, -3.0, 0.0]])[0]
    assert box[2] - box[0] == kalman.MIN_SIDE and box[3] - box[1] == kalman.MIN_SIDE


def test_warp_translation_rotation_and_scale() -> None:
    mean, cov = state(vx=30.0)
    shifted, same_cov = kalman.warp(mean, cov, [[1, 0, 7.0], [0, 1, -3.0]])
    np.testing.assert_allclose(shifted, [[107.0, 47.0, W, H, 30.0, 0, 0, 0]])
    np.testing.assert_allclose(same_cov, cov)
    rot = np.array([[0.0, -2.0, 0.0], [2.0, 0.0, 0.0]])  # 90 degrees, scale 2
    turned, turned_cov = kalman.warp(mean, cov, rot)
    np.testing.assert_allclose(turned, [[-100.0, 200.0, 2 * W, 2 * H, 0.0, 60.0, 0, 0]], atol=1e-9)
    assert turned_cov[0, 2, 2] == pytest.approx(4 * cov[0, 2, 2])


@pytest.mark.parametrize("name", ["std_weight_position", "std_weight_velocity", "nominal_fps"])
def test_params_validated(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KalmanParams(**{name: 0.0})
