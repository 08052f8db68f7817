import numpy as np
import pytest

from luckystack.core.frame import normalise_frame
from luckystack.core.pipeline import LiveStacker, PipelineParams
from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session


@pytest.fixture(scope="module")
def session():
    return simulate_session(
        40, shape=(160, 200), model=PlanetModel(radius_px=40.0),
        seeing=SeeingModel(jitter_px=2.0), bad_frames={"black": 1, "clipped": 1},
        seed=5,
    )


def _run(frames, **kw):
    ls = LiveStacker(PipelineParams(**kw))
    return ls, [ls.add(normalise_frame(f)) for f in frames]


def test_identical_frames_stack_to_the_frame(session):
    good = session.frames[int(session.best_indices(1)[0])]
    ls, outs = _run([good] * 20)
    assert all(o.accepted for o in outs)
    assert all(o.shift_yx == (0.0, 0.0) for o in outs)
    first = ls.first_crop()
    np.testing.assert_allclose(ls.stacked(), first, atol=1e-6)


def test_bad_frames_rejected_with_reasons_never_crash(session):
    ls, outs = _run(session.frames)
    for kind, o in zip(session.kinds, outs):
        if kind == "black":
            assert not o.accepted and "no planet" in o.reason
        elif kind == "clipped":
            assert not o.accepted and "clipped" in o.reason
        else:
            assert o.accepted, o.reason


def test_registration_recovers_true_shifts(session):
    ls, outs = _run(session.frames)
    good = [i for i, k in enumerate(session.kinds) if k == "good"]
    # total measured displacement = crop box position + residual shift
    measured = []
    for i in good:
        o = outs[i]
        measured.append((o.box.y0 + o.shift_yx[0], o.box.x0 + o.shift_yx[1]))
    measured = np.array(measured)
    true = session.shifts_yx[good]
    err = (measured - measured.mean(0)) - (true - true.mean(0))
    assert np.sqrt((err**2).mean()) < 0.25


def test_seed_preset_runs_and_differs_from_default(session):
    seed, so = _run(session.frames, method="seed", register=False)
    default, do = _run(session.frames)
    assert seed.stacked() is not None and default.stacked() is not None
    assert sum(o.accepted for o in so) > sum(o.accepted for o in do)  # seed keeps the clipped frame


def test_replay_rebuilds_the_same_stack(session):
    ls, outs = _run(session.frames)
    fresh = LiveStacker(PipelineParams())
    for f, o in zip(session.frames, outs):
        if o.accepted:
            fresh.replay(normalise_frame(f), o)
    np.testing.assert_allclose(fresh.stacked(), ls.stacked(), atol=1e-5)


def test_colour_frames_stack_in_colour():
    s = simulate_session(8, shape=(120, 160), model=PlanetModel(radius_px=30.0, colour=(1.0, 0.8, 0.6)),
                         seed=6)
    ls, outs = _run(s.frames)
    assert all(o.accepted for o in outs)
    assert ls.stacked().shape[2] == 3


def test_mono_after_colour_rejected():
    s = simulate_session(2, shape=(120, 160), model=PlanetModel(radius_px=30.0, colour=(1.0, 0.8, 0.6)),
                         seed=6)
    m = simulate_session(1, shape=(120, 160), model=PlanetModel(radius_px=30.0), seed=6)
    ls, outs = _run([s.frames[0], m.frames[0]])
    assert outs[0].accepted and not outs[1].accepted
    assert "mono" in outs[1].reason


def test_heavily_blurred_frame_rejected_and_never_ranked_sharpest(session):
    from scipy.ndimage import gaussian_filter

    good = [f for f, k in zip(session.frames, session.kinds) if k == "good"]
    blurred = gaussian_filter(good[0].astype(float), 8.0).round().astype(good[0].dtype)
    frames = good[:20] + [blurred] + good[20:30]
    ls, outs = _run(frames, keep=5)
    assert not outs[20].accepted
    assert "low quality" in outs[20].reason
    scores = [o.sharpness for o in outs if o.sharpness is not None]
    assert outs[20].sharpness == min(scores)
    assert ls.stack_size == 20


def test_half_out_of_frame_rejected_not_crashing():
    s = simulate_session(3, shape=(160, 200), model=PlanetModel(radius_px=40.0),
                         seed=8, center_yx=(80.0, 198.0))
    ls, outs = _run(s.frames)
    assert all(not o.accepted and "clipped" in o.reason for o in outs)
    assert ls.stacked() is None


def test_long_buffer_switches_to_uint16_storage_with_same_result(session):
    good = [f for f, k in zip(session.frames, session.kinds) if k == "good"][:25]
    a, _ = _run(good, buffer_size=2000, keep=10)
    b, _ = _run(good, buffer_size=2000, keep=10, float_buffer_limit_bytes=1)
    assert a._stack.storage == "float32" and b._stack.storage == "uint16"
    assert b._stack.nbytes < 0.6 * a._stack.nbytes
    diff = np.abs(a.stacked() - b.stacked())
    # 1/65535 quantisation; bicubic undershoot below 0 on the sky is clipped
    assert diff.mean() < 1e-5 and diff.max() < 1e-3


def test_default_sharpening_is_the_measured_chain_and_seed_is_origin(session):
    from luckystack.core.pipeline import SharpenParams, apply_sharpening
    from luckystack.core.sharpen import DEFAULT_CHAIN, apply_chain, gaussian_laplacian

    ls, _ = _run(session.frames[:12])
    stacked = ls.stacked()
    np.testing.assert_allclose(ls.sharpen(stacked), apply_chain(stacked, DEFAULT_CHAIN,
                                                                luminance_only=True), atol=1e-6)
    origin = apply_sharpening(stacked, SharpenParams(method="gaussian_laplacian"))
    np.testing.assert_allclose(origin, gaussian_laplacian(stacked), atol=1e-6)
    flat = np.full((40, 40), 0.2, np.float32)
    np.testing.assert_allclose(apply_sharpening(flat, SharpenParams()), 0.2, atol=1e-6)


def test_comparison_panels_best_stack_sharpened(session):
    ls, outs = _run(session.frames)
    comp = ls.comparison()
    h, w = ls.stacked().shape
    assert comp.shape[0] > h  # a label band above the panels
    assert comp.shape[1] == 3 * w + 2 * 4
    best = max(o.sharpness for o in outs if o.accepted)
    assert ls._best_score == best
