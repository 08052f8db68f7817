"""Smoke tests of the quality benchmark's scoring (bench/quality.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from luckystack.core.simulate import simulate_session

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("luckystack_bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def session_and_scorer(quality):
    scenario = quality.scenarios(True)["live"]
    session = simulate_session(
        2, shape=scenario.shape, model=scenario.model, seeing=scenario.seeing, seed=7
    )
    return session, quality.TruthScorer(session, scenario.model, 7)


def test_ssim_identity_and_range(quality):
    rng = np.random.default_rng(0)
    a = rng.random((40, 50))
    assert quality.ssim(a, a, data_range=1.0) == pytest.approx(1.0)
    noisy = quality.ssim(a, a + 0.3 * rng.standard_normal(a.shape), data_range=1.0)
    assert 0.0 < noisy < 0.9


def test_truth_scores_near_perfect(session_and_scorer):
    session, scorer = session_and_scorer
    score = scorer.score(session.truth)
    assert score.psnr > 50
    assert score.ssim > 0.999
    assert np.allclose(score.offset_yx, 0.0, atol=0.01)


def test_shifted_crop_is_registered(session_and_scorer):
    session, scorer = session_and_scorer
    crop = ndimage.shift(session.truth, (3.3, -2.7), order=3)[50:200, 60:260]
    score = scorer.score(crop)
    assert np.allclose(score.offset_yx, (50 - 3.3, 60 + 2.7), atol=0.06)
    assert score.psnr > 38
    assert score.coverage == 1.0


def test_blur_lowers_the_score(session_and_scorer):
    session, scorer = session_and_scorer
    sharp = scorer.score(ndimage.gaussian_filter(session.truth, 1.0))
    blurred = scorer.score(ndimage.gaussian_filter(session.truth, 2.5))
    assert blurred.psnr < sharp.psnr
    assert blurred.ssim < sharp.ssim
