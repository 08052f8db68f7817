import csv
import os

import cv2
import numpy as np
import pytest

from luckystack.daemon.outputs import CropLog, CropRecord, atomic_write_bytes, write_png16


def _rec(i, **kw):
    base = dict(index=i, file=f"{i}.png", time="t", outcome="accepted", reason="", x=1, y=2,
                width=3, height=4, center_x=1.5, center_y=2.25, disc_x=1, disc_y=2,
                disc_width=3, disc_height=4, sharpness=0.1 + i, shift_x=0.125, shift_y=-0.5,
                stacked=i)
    base.update(kw)
    return CropRecord(**base)


def test_csv_rows_match_header_and_round_trip(tmp_path):
    log = CropLog(tmp_path / "crops.csv")
    assert log.open() == []
    recs = [_rec(0), _rec(1, outcome="rejected", reason="no planet, found nothing", x=None,
                         width=None, sharpness=None, shift_x=None)]
    for r in recs:
        log.append(r)
    log.close()
    with open(tmp_path / "crops.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == CropRecord.header()
    assert all(len(r) == len(rows[0]) for r in rows)
    again = CropLog(tmp_path / "crops.csv")
    assert again.open() == recs
    again.close()


def test_torn_last_line_is_cut_on_reopen(tmp_path):
    path = tmp_path / "crops.csv"
    log = CropLog(path)
    log.open()
    log.append(_rec(0))
    log.close()
    with open(path, "a") as fh:
        fh.write("1,1.png,t,accep")  # killed mid-row
    log = CropLog(path)
    assert [r.index for r in log.open()] == [0]
    log.append(_rec(1))
    log.close()
    assert [r.index for r in CropLog(path).open()] == [0, 1]


def test_foreign_header_is_refused(tmp_path):
    path = tmp_path / "crops.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        CropLog(path).open()


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    target = tmp_path / "x.png"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["x.png"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)],
                         ids=["umask022", "umask027", "umask077"])
def test_outputs_get_the_csvs_permissions_under_the_umask(tmp_path, umask, mode):
    """Images used to keep mkstemp's 0600, unreadable by the group the unit's
    UMask=0027 shares the outputs with; now they are created as the CSV is."""
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "stacked.png", b"x")
        atomic_write_bytes(tmp_path / "stacked.png", b"y")  # replacing: the new file's mode
        log = CropLog(tmp_path / "crops.csv")
        log.open()
        log.close()
    finally:
        os.umask(old)
    assert (tmp_path / "stacked.png").stat().st_mode & 0o777 == mode
    assert (tmp_path / "crops.csv").stat().st_mode & 0o777 == mode


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.png"]


def test_png16_round_trip(tmp_path):
    img = np.linspace(0, 1, 30 * 20 * 3, dtype=np.float32).reshape(30, 20, 3)
    write_png16(tmp_path / "c.png", img)
    back = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (30, 20, 3)
    np.testing.assert_allclose(back[..., ::-1] / 65535.0, img, atol=1e-5)  # BGR on disk
