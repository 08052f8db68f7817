import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.core.stack import ResizingStack, RollingStack, sigma_clipped_mean


def _frames(n, shape=(6, 7), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


@pytest.mark.parametrize("combine", ["mean", "median", "sigma_clip"])
def test_identical_frames_stack_to_the_frame(combine):
    frame = _frames(1, (9, 11, 3))[0]
    st = RollingStack(20, frame.shape, combine=combine)
    for _ in range(20):
        st.push(frame, 1.0)
    np.testing.assert_allclose(st.result(), frame, atol=1e-6)
    assert st.result().dtype == np.float32
    assert st.result().shape == frame.shape


def test_mean_is_mean_of_last_n():
    frames = _frames(50)
    st = RollingStack(20, frames[0].shape)
    for f in frames:
        st.push(f)
    np.testing.assert_allclose(st.result(), np.mean(frames[-20:], axis=0), atol=1e-6)
    assert len(st) == 20


def test_keep_selects_best_scores_of_the_buffer():
    frames = _frames(30)
    scores = np.random.default_rng(1).random(30)
    st = RollingStack(10, frames[0].shape, keep=3)
    for f, s in zip(frames, scores):
        st.push(f, float(s))
    window = np.arange(20, 30)
    best = window[np.argsort(scores[window])[-3:]]
    np.testing.assert_allclose(st.result(), np.mean([frames[i] for i in best], axis=0), atol=1e-6)
    assert st.selected_count == 3


def test_selection_matches_brute_force_under_random_pushes():
    rng = np.random.default_rng(5)
    frames = _frames(300, (3, 3))
    scores = rng.random(300)
    scores[::7] = 0.5  # ties are broken by recency
    cap, keep = 25, 6
    st = RollingStack(cap, (3, 3), keep=keep)
    for i, (f, s) in enumerate(zip(frames, scores)):
        st.push(f, float(s))
        lo = max(0, i + 1 - cap)
        idx = list(range(lo, i + 1))
        best = sorted(idx, key=lambda j: (scores[j], j))[-keep:]
        np.testing.assert_allclose(st.mean(), np.mean([frames[j] for j in best], axis=0), atol=1e-5)


def test_quality_weighting():
    a, b = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    st = RollingStack(2, (4, 4), weighting="quality")
    st.push(a, 1.0)
    st.push(b, 3.0)
    np.testing.assert_allclose(st.result(), 0.75, atol=1e-6)


def test_sigma_clip_rejects_an_outlier_frame():
    base = np.full((5, 5), 0.3, np.float32)
    rng = np.random.default_rng(2)
    frames = [base + rng.normal(0, 0.01, base.shape).astype(np.float32) for _ in range(15)]
    frames[4] = np.ones_like(base)  # a satellite trail, a hot frame
    st = RollingStack(15, base.shape, combine="sigma_clip")
    for f in frames:
        st.push(f)
    assert np.abs(st.result() - 0.3).max() < 0.02
    mean = RollingStack(15, base.shape)
    for f in frames:
        mean.push(f)
    assert np.abs(mean.result() - 0.3).max() > 0.03


def test_sigma_clipped_mean_of_constant_is_constant():
    cube = np.full((6, 3, 3), 0.25, np.float32)
    np.testing.assert_allclose(sigma_clipped_mean(cube), 0.25)


def test_wrong_shape_and_bad_args():
    st = RollingStack(3, (4, 4))
    with pytest.raises(FrameError, match="does not match"):
        st.push(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError):
        RollingStack(0, (4, 4))
    with pytest.raises(ValueError):
        RollingStack(3, (4, 4), keep=4)
    with pytest.raises(ValueError, match="empty"):
        st.result()


def test_resizing_stack_scales_to_the_largest_crop():
    st = ResizingStack(20)
    st.push(np.full((10, 20), 0.2, np.float32))
    st.push(np.full((12, 16), 0.4, np.float32))
    out = st.result()
    assert out.shape == (12, 20)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_resizing_stack_keeps_last_n():
    st = ResizingStack(2)
    for v in (0.0, 0.5, 1.0):
        st.push(np.full((4, 4), v, np.float32))
    np.testing.assert_allclose(st.result(), 0.75)
    assert len(st) == 2


def test_uint16_storage_matches_float_within_quantisation():
    frames = _frames(30, (5, 6, 3))
    a = RollingStack(10, frames[0].shape, keep=4)
    b = RollingStack(10, frames[0].shape, keep=4, storage="uint16")
    scores = np.random.default_rng(3).random(30)
    for f, s in zip(frames, scores):
        a.push(f, float(s))
        b.push(f, float(s))
    assert b.nbytes < a.nbytes
    np.testing.assert_allclose(a.result(), b.result(), atol=1 / 65535)
