"""Known-answer tests of alignment points, de-warping and drizzle (core/warp.py)."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from luckystack.core.crop import CropBox, extract_shifted
from luckystack.core.errors import FrameError
from luckystack.core.warp import (
    AlignmentGrid,
    DrizzleStack,
    LocalShifts,
    align_locally,
    dewarp,
    displacement_field,
    drizzle_accumulate,
    estimate_local_shifts,
    fill_holes,
    place_alignment_points,
)

SHAPE = (200, 200)
CENTER = (99.5, 101.0)
RADIUS = 70.0


# --------------------------------------------------------------------------
# Fixtures: a textured disc and a known smooth warp
# --------------------------------------------------------------------------


def _disc_mask(shape=SHAPE, center=CENTER, radius=RADIUS):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def planet():
    """A limb-darkened disc on black sky with 2-D texture (belts + random detail)."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r2 = ((yy - CENTER[0]) ** 2 + (xx - CENTER[1]) ** 2) / RADIUS**2
    limb = np.sqrt(np.clip(1 - r2, 0, 1))
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.5)
    texture /= texture.std()
    belts = 0.15 * np.sin(yy / 5.0)
    img = (r2 <= 1) * (0.4 + 0.6 * limb) * (1 + belts + 0.12 * texture) * 0.7
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)


def _known_field(shape=SHAPE, amp=1.0):
    """A smooth displacement ``w`` (content at x comes from x - w(x)), |w| <~ amp px."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    wy = amp * np.sin(2 * np.pi * xx / 130 + 0.4) * np.cos(2 * np.pi * yy / 160)
    wx = 0.8 * amp * np.cos(2 * np.pi * (yy + 0.5 * xx) / 120 + 1.0)
    return np.stack([wy, wx]).astype(np.float32)


def _apply_field(image, w):
    """``out(x) = image(x - w(x))``: the content moves by ``w`` (bicubic remap)."""
    h, ww = image.shape[:2]
    yy, xx = np.mgrid[:h, :ww].astype(np.float32)
    return cv2.remap(
        image, xx - w[1], yy - w[0], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )


def _local_shift_truth(w):
    """The displacement ``f`` on the reference grid: ``f(x) = w(x + f(x))``."""
    h, ww = w.shape[1:]
    yy, xx = np.mgrid[:h, :ww].astype(np.float32)
    f = w.copy()
    for _ in range(20):
        f = np.stack(
            [
                cv2.remap(w[i], xx + f[1], yy + f[0], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
                for i in range(2)
            ]
        )
    return f


def _at(field, points_yx):
    """Bilinear samples of a (2, H, W) field at (n, 2) points."""
    return np.stack(
        [ndimage.map_coordinates(field[i], points_yx.T, order=1) for i in range(2)], axis=1
    )


# --------------------------------------------------------------------------
# Alignment points
# --------------------------------------------------------------------------


def test_points_cover_the_disc_and_avoid_the_sky(planet):
    grid = place_alignment_points(planet, box_px=32, step_px=20)
    assert isinstance(grid, AlignmentGrid)
    assert len(grid) >= 25
    mask = _disc_mask()
    centres = grid.centers_yx
    # every centre on the planet, every patch at least 60 % on the disc
    assert mask[np.rint(centres[:, 0]).astype(int), np.rint(centres[:, 1]).astype(int)].all()
    assert (grid.disc_fraction >= 0.6).all()
    for y0, x0 in grid.origins_yx:
        patch = mask[y0 : y0 + 32, x0 : x0 + 32]
        assert patch.shape == (32, 32) and patch.mean() >= 0.6
    # the grid spans the disc: centres reach within ~a box of the limb on each side
    assert centres[:, 1].min() < CENTER[1] - RADIUS + 40
    assert centres[:, 1].max() > CENTER[1] + RADIUS - 40


def test_points_skip_flat_regions_and_empty_frames(planet):
    flat = (_disc_mask() * 0.6).astype(np.float32)  # a featureless disc: only the limb
    grid = place_alignment_points(flat, box_px=32, step_px=20, min_structure=0.02)
    # interior patches of a flat disc have no structure; only limb patches remain
    d = np.hypot(grid.centers_yx[:, 0] - CENTER[0], grid.centers_yx[:, 1] - CENTER[1])
    assert (d > RADIUS - 32).all()
    assert len(place_alignment_points(np.zeros(SHAPE, np.float32))) == 0
    tiny = place_alignment_points(planet[:20, :20], box_px=32)
    assert len(tiny) == 0


def test_points_respect_an_explicit_mask(planet):
    mask = np.zeros(SHAPE, bool)
    mask[:, :100] = True  # only the left half counts as disc
    grid = place_alignment_points(planet, disc_mask=mask, box_px=32, step_px=20)
    assert len(grid) > 0
    assert (grid.origins_yx[:, 1] + 32 * 0.6 <= 100 + 1e-9).all()


def test_point_placement_validates(planet):
    with pytest.raises(FrameError):
        place_alignment_points(planet[None])
    with pytest.raises(FrameError):
        place_alignment_points(planet, disc_mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError):
        place_alignment_points(planet, box_px=4)
    with pytest.raises(ValueError):
        place_alignment_points(planet, min_disc_fraction=0.0)


# --------------------------------------------------------------------------
# Local shifts and de-warping
# --------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_known_smooth_field_is_recovered(planet, noise):
    rng = np.random.default_rng(3)
    w = _known_field()
    truth = _local_shift_truth(w)
    moving = _apply_field(planet, w) + rng.normal(0, noise, SHAPE).astype(np.float32)
    grid = place_alignment_points(planet)
    shifts = estimate_local_shifts(planet, moving, grid)
    assert isinstance(shifts, LocalShifts)
    assert shifts.valid.mean() >= 0.9
    err = shifts.shifts_yx[shifts.valid] - _at(truth, grid.centers_yx[shifts.valid])
    assert np.abs(err).max() < 0.2
    # the dense field matches too over the disc interior
    field = displacement_field(grid, shifts)
    assert field.shape == (2,) + SHAPE and field.dtype == np.float32
    inner = _disc_mask(radius=RADIUS - 15)
    assert np.sqrt(np.mean((field - truth)[:, inner] ** 2)) < 0.15
    # de-warped is far closer to the reference than the (globally aligned) frame
    clean = _apply_field(planet, w)
    mse_before = np.mean((clean - planet)[inner] ** 2)
    mse_after = np.mean((dewarp(clean, field) - planet)[inner] ** 2)
    assert mse_after < 0.1 * mse_before


def test_field_from_shifts_alone_matches_the_fitted_one(planet):
    """Without the fit's coefficients, kriging through the AP shifts gives ~the same field."""
    import dataclasses

    w = _known_field(amp=0.8)
    grid = place_alignment_points(planet)
    shifts = estimate_local_shifts(planet, _apply_field(planet, w), grid)
    exact = displacement_field(grid, shifts)
    bare = dataclasses.replace(shifts, coefficients_yx=None)
    kriged = displacement_field(grid, bare)
    inner = _disc_mask(radius=RADIUS - 15)
    assert np.sqrt(np.mean((kriged - exact)[:, inner] ** 2)) < 0.1
    smoother = displacement_field(grid, shifts, smooth=40.0)
    assert np.isfinite(smoother).all()
    assert np.sqrt(np.mean((smoother - exact)[:, inner] ** 2)) < 0.3
    with pytest.raises(ValueError):
        displacement_field(grid, shifts, smooth=0.0)
    with pytest.raises(ValueError):
        displacement_field(place_alignment_points(planet, step_px=30), shifts)


def test_global_shift_as_starting_point(planet):
    """An unaligned frame: the shifts include the global one, the field tends to it."""
    w = _known_field(amp=0.7)
    glob = (2.3, -1.6)
    moving = ndimage.shift(_apply_field(planet, w), glob, order=3, mode="nearest")
    grid = place_alignment_points(planet, box_px=32, step_px=20)
    shifts = estimate_local_shifts(planet, moving.astype(np.float32), grid, initial_yx=glob)
    assert shifts.base_yx == glob
    truth = _at(_local_shift_truth(w), grid.centers_yx) + glob
    ok = shifts.valid
    assert ok.mean() >= 0.9
    assert np.abs(shifts.shifts_yx[ok] - truth[ok]).max() < 0.25
    field = displacement_field(grid, shifts)
    # far from every AP (the corners) the field is the global shift
    assert field[:, 0, 0] == pytest.approx(glob, abs=0.02)
    assert field[:, -1, -1] == pytest.approx(glob, abs=0.02)
    out = dewarp(moving, field)
    inner = _disc_mask(radius=RADIUS - 15)
    assert np.mean((out - planet)[inner] ** 2) < 0.1 * np.mean((moving - planet)[inner] ** 2)


def test_identical_images_give_zero_shifts(planet):
    grid = place_alignment_points(planet)
    shifts = estimate_local_shifts(planet, planet, grid)
    assert shifts.valid.all()
    assert np.abs(shifts.shifts_yx).max() < 0.02
    assert shifts.peak.min() > 0.99
    assert shifts.rms_px < 0.02
    field = displacement_field(grid, shifts)
    assert np.abs(field).max() < 0.02


def test_brightness_change_does_not_move_points(planet):
    grid = place_alignment_points(planet)
    shifts = estimate_local_shifts(planet, 1.7 * planet + 0.05, grid)
    assert np.abs(shifts.shifts_yx).max() < 0.03


def test_corrupted_point_is_rejected(planet):
    """A patch of the moving frame replaced by garbage is rejected; far APs are unaffected."""
    rng = np.random.default_rng(5)
    grid = place_alignment_points(planet, box_px=32, step_px=20)
    moving = planet.copy()
    k = len(grid) // 2
    y0, x0 = grid.origins_yx[k]
    moving[y0 : y0 + 32, x0 : x0 + 32] = rng.uniform(0, 0.7, (32, 32))
    shifts = estimate_local_shifts(planet, moving, grid)
    assert not shifts.valid[k]
    assert np.isinf(shifts.sigma_yx[k]).all()
    assert shifts.peak[k] < 0.3
    assert np.abs(shifts.shifts_yx[k]).max() < 1.0  # interpolated, not the garbage's own
    far = np.hypot(*(grid.centers_yx - grid.centers_yx[k]).T) > 2.5 * grid.step_px
    assert shifts.valid[far].all()
    assert np.abs(shifts.shifts_yx[far]).max() < 0.2
    assert shifts.valid.sum() >= len(grid) - 10


def test_local_shifts_validate(planet):
    grid = place_alignment_points(planet)
    with pytest.raises(FrameError):
        estimate_local_shifts(planet, planet[:-1], grid)
    with pytest.raises(FrameError):
        estimate_local_shifts(planet[:-1], planet[:-1], grid)
    with pytest.raises(FrameError):
        estimate_local_shifts(planet, np.full(SHAPE, np.nan, np.float32), grid)
    with pytest.raises(ValueError):
        estimate_local_shifts(planet, planet, grid, iterations=0)
    with pytest.raises(ValueError):
        estimate_local_shifts(planet, planet, grid, presmooth_px=())


def test_empty_grid_gives_the_base_field():
    grid = place_alignment_points(np.zeros((64, 64), np.float32))
    shifts = estimate_local_shifts(
        np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32), grid, initial_yx=(0.5, -1)
    )
    field = displacement_field(grid, shifts)
    assert field.shape == (2, 64, 64)
    assert np.all(field[0] == 0.5) and np.all(field[1] == -1.0)


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 3)])
def test_zero_field_is_identity(shape):
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, shape).astype(np.float32)
    out = dewarp(image, np.zeros((2, 48, 64), np.float32))
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_constant_field_is_a_shift(planet):
    """dewarp with a constant field s undoes a content shift by s (same as extract_shifted)."""
    s = (1.25, -0.5)
    moving = ndimage.shift(planet, s, order=3, mode="nearest").astype(np.float32)
    field = np.empty((2,) + SHAPE, np.float32)
    field[0], field[1] = s
    out = dewarp(moving, field)
    inner = _disc_mask(radius=RADIUS + 5)
    assert np.abs(out - planet)[inner].max() < 0.01
    box = CropBox(0, 0, SHAPE[0], SHAPE[1])
    np.testing.assert_allclose(out, extract_shifted(moving, box, (-s[0], -s[1])), atol=1e-4)


def test_offset_samples_a_crop_from_the_full_frame(planet):
    field = np.zeros((2, 50, 60), np.float32)
    out = dewarp(planet, field, offset_yx=(30, 40))
    np.testing.assert_allclose(out, planet[30:80, 40:100], atol=1e-6)
    edge = dewarp(planet, field, offset_yx=(-5, 0), border="constant")
    assert np.all(edge[:5] == 0)


def test_dewarp_validates(planet):
    with pytest.raises(FrameError):
        dewarp(planet, np.zeros((3,) + SHAPE))
    with pytest.raises(FrameError):
        dewarp(np.zeros((4, 4, 7)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError):
        dewarp(planet, np.zeros((2,) + SHAPE), border="wrap")


def test_align_locally_on_a_colour_crop(planet):
    w = _known_field(amp=0.8)
    colour = np.stack([planet, 0.9 * planet, 0.7 * planet], axis=-1)
    moving = _apply_field(colour, w)
    lum = moving.mean(axis=-1)
    grid = place_alignment_points(colour.mean(axis=-1), box_px=32, step_px=20)
    out, shifts = align_locally(colour.mean(axis=-1), moving, lum, grid)
    assert out.shape == colour.shape and out.dtype == np.float32
    inner = _disc_mask(radius=RADIUS - 15)
    assert np.mean((out - colour)[inner] ** 2) < 0.1 * np.mean((moving - colour)[inner] ** 2)
    assert shifts.valid.mean() >= 0.9
    with pytest.raises(FrameError):
        align_locally(planet, colour[:-1], lum, grid)


# --------------------------------------------------------------------------
# Drizzle
# --------------------------------------------------------------------------

F0 = 0.6  # cycles per input pixel: above the input Nyquist (0.5)


def _sampled_sinusoid(shift_yx, shape=(48, 64)):
    """Pixel-integrated samples of ``1 + cos(2 pi F0 x)`` whose content moved by ``shift``."""
    x = np.arange(shape[1]) - shift_yx[1]
    row = 1.0 + np.sinc(F0) * np.cos(2 * np.pi * F0 * x)
    return np.broadcast_to(row, shape).astype(np.float32).copy()


def _row_spectrum(image):
    rows = image[8:-8, 8:-8].mean(axis=0)
    rows = (rows - rows.mean()) * np.hanning(rows.size)
    return np.fft.rfftfreq(rows.size), np.abs(np.fft.rfft(rows)) ** 2


def _power_near(freqs, power, f):
    return power[np.abs(freqs - f) <= 0.01].max()


def test_drizzle_recovers_frequencies_above_nyquist():
    rng = np.random.default_rng(2)
    shifts = [(rng.uniform(-2, 2), i / 4 + rng.uniform(-1, 1) * 0.03 + rng.integers(-2, 3))
              for i in range(4) for _ in range(4)]
    stack = DrizzleStack((48, 64), scale=2.0, pixfrac=0.5)
    for s in shifts:
        stack.add(_sampled_sinusoid(s), s)
    assert len(stack) == 16
    out = stack.result()
    assert out.shape == (96, 128)
    # 0.6 cycles/input px = 0.3 cycles/output px; its alias in one frame is 0.4 -> 0.2
    freqs, power = _row_spectrum(out)
    assert abs(freqs[np.argmax(power)] - F0 / 2) <= 0.01
    assert _power_near(freqs, power, F0 / 2) > 20 * _power_near(freqs, power, (1 - F0) / 2)
    # a x2 resize of one frame shows the alias (plus its weaker interpolation image)
    upsampled = cv2.resize(_sampled_sinusoid(shifts[0]), (128, 96), interpolation=cv2.INTER_CUBIC)
    freqs, power = _row_spectrum(upsampled)
    assert abs(freqs[np.argmax(power)] - (1 - F0) / 2) <= 0.01
    assert _power_near(freqs, power, F0 / 2) < 0.15 * _power_near(freqs, power, (1 - F0) / 2)


@pytest.mark.parametrize("scale, pixfrac", [(2.0, 0.5), (2.0, 1.0), (1.5, 0.7)])
def test_drizzle_of_a_flat_field_is_flat(scale, pixfrac):
    rng = np.random.default_rng(4)
    stack = DrizzleStack((40, 50), scale=scale, pixfrac=pixfrac)
    for _ in range(10):
        stack.add(np.full((40, 50), 0.25, np.float32), tuple(rng.uniform(-1.5, 1.5, 2)))
    out = stack.result()
    assert out.shape == (round(40 * scale), round(50 * scale))
    np.testing.assert_allclose(out, 0.25, rtol=1e-6)
    # with a local field as well
    field = 0.5 * _known_field((40, 50))
    stack.add(np.full((40, 50), 0.25, np.float32), (0.3, 0.1), field=field)
    np.testing.assert_allclose(stack.result(), 0.25, rtol=1e-6)


def test_drizzle_fast_path_equals_the_general_one():
    rng = np.random.default_rng(6)
    image = rng.uniform(0, 1, (30, 40)).astype(np.float32)
    a = DrizzleStack((30, 40), scale=2.0, pixfrac=0.7)
    b = DrizzleStack((30, 40), scale=2.0, pixfrac=0.7)
    a.add(image, (0.37, -1.21))
    b.add(image, (0.37, -1.21), field=np.zeros((2, 30, 40), np.float32))
    np.testing.assert_allclose(a.weight, b.weight, atol=1e-5)
    np.testing.assert_allclose(a.flux, b.flux, atol=1e-5)


def test_drizzle_places_content_at_its_reference_position():
    """A frame whose content moved by s, drizzled with s, lines up with the unshifted one."""
    yy, xx = np.mgrid[:40, :40]
    blob = lambda cy, cx: np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)  # noqa: E731
    ref = DrizzleStack((40, 40), scale=2.0, pixfrac=1.0)
    ref.add(blob(20, 20))
    moved = DrizzleStack((40, 40), scale=2.0, pixfrac=1.0)
    moved.add(blob(23, 18), (3.0, -2.0))
    np.testing.assert_allclose(moved.result()[10:70, 10:70], ref.result()[10:70, 10:70], atol=1e-6)
    # output pixel centre of input (20, 20) at scale 2 is 40.5
    cy, cx = ndimage.center_of_mass(ref.result())
    assert (cy, cx) == pytest.approx((40.5, 40.5), abs=1e-6)


def test_drizzle_remove_undoes_add_and_colour_matches_mono():
    rng = np.random.default_rng(8)
    image = rng.uniform(0, 1, (20, 30, 3)).astype(np.float32)
    stack = DrizzleStack((20, 30), scale=1.5, pixfrac=0.8, channels=3)
    stack.add(image[..., ::-1], (0.1, 0.2))
    before = stack.result()
    stack.add(image, (0.6, -0.3), weight=2.0)
    stack.remove(image, (0.6, -0.3), weight=2.0)
    assert len(stack) == 1
    np.testing.assert_allclose(stack.result(), before, rtol=1e-6)
    mono = DrizzleStack((20, 30), scale=1.5, pixfrac=0.8)
    mono.add(image[..., 2], (0.1, 0.2))
    np.testing.assert_allclose(before[..., 0], mono.result(), atol=1e-6)


def test_holes_are_filled():
    stack = DrizzleStack((20, 20), scale=2.0, pixfrac=0.3)
    # drops centred on output pixels 0, 2, 4, ...: one frame with small drops leaves holes
    stack.add(np.full((20, 20), 0.5, np.float32), (0.25, 0.25))
    assert (stack.weight == 0).mean() > 0.7
    out = stack.result()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    assert np.all(fill_holes(np.zeros((4, 4)), np.zeros((4, 4))) == 0)


def test_drizzle_validates():
    flux, weight = np.zeros((20, 20)), np.zeros((20, 20))
    with pytest.raises(FrameError):
        drizzle_accumulate(flux, weight, np.zeros((11, 10)), scale=2.0)
    with pytest.raises(ValueError):
        drizzle_accumulate(flux, weight, np.zeros((10, 10)), pixfrac=0.0)
    with pytest.raises(FrameError):
        drizzle_accumulate(flux, weight, np.zeros((10, 10)), field=np.zeros((2, 5, 5)))
    with pytest.raises(ValueError):
        DrizzleStack((10, 10), scale=0.0)
