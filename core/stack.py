"""Rolling stacks: the last N crops combined into one image.

:class:`RollingStack` holds same-size, registered crops in a preallocated
ring buffer and keeps running sums of the selected frames, so adding a frame
costs a constant amount of pixel work whatever the buffer size.
:class:`ResizingStack` is the origin's stack: crops of varying size, each
scaled to the largest with linear interpolation and averaged.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import cv2
import numpy as np

from luckystack.core.errors import FrameError

__all__ = ["RollingStack", "ResizingStack", "Combine", "Weighting", "sigma_clipped_mean"]

Combine = Literal["mean", "median", "sigma_clip"]
Weighting = Literal["none", "quality"]


def sigma_clipped_mean(
    cube: np.ndarray, *, weights: np.ndarray | None = None, kappa: float = 2.5, iterations: int = 2
) -> np.ndarray:
    """Per-pixel mean of ``cube`` (N, ...) after rejecting outliers.

    Each pass rejects values further than ``kappa`` robust sigmas (1.4826 × MAD
    around the median) from the median; pixels where everything would be
    rejected fall back to the median.
    """
    cube = cube.astype(np.float32, copy=False)
    n = cube.shape[0]
    w = np.ones(n, np.float32) if weights is None else weights.astype(np.float32)
    w = w.reshape((n,) + (1,) * (cube.ndim - 1))
    mask = np.ones(cube.shape, dtype=bool)
    med = np.median(cube, axis=0)
    for _ in range(iterations):
        masked = np.where(mask, cube, np.nan)
        med = np.nanmedian(masked, axis=0)
        mad = np.nanmedian(np.abs(masked - med), axis=0)
        sigma = 1.4826 * mad + 1e-6
        mask = np.abs(cube - med) <= kappa * sigma
    wsum = (w * mask).sum(axis=0)
    total = (cube * w * mask).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(wsum > 0, total / np.maximum(wsum, 1e-12), med)
    return out.astype(np.float32)


class RollingStack:
    """A ring buffer of the last ``capacity`` registered crops, best ``keep`` stacked.

    Parameters
    ----------
    capacity : int
        Buffer size N (the last N accepted frames).
    frame_shape : tuple of int
        Shape of every crop, ``(H, W)`` or ``(H, W, C)``.
    keep : int, optional
        How many of the buffered frames are stacked: the ``keep`` with the
        highest scores. Default: all.
    combine : {"mean", "median", "sigma_clip"}
    weighting : {"none", "quality"}
        ``quality`` weights each selected frame by its score (mean and
        sigma-clip only).
    storage : {"float32", "uint16"}
        How crops are kept in the buffer. ``uint16`` (1.0 = 65535, clipped to
        [0, 1]) halves the memory of long buffers at a precision of 1.5e-5,
        well below any camera's noise.

    Notes
    -----
    Selection changes by at most two frames per push (the evicted frame leaves,
    the new one may enter and displace the worst selected one), and the
    running sums are updated only for those, so the pixel work per push does
    not depend on ``capacity``. The sums are float64 and recomputed from the
    buffer every ``capacity`` pushes to bound rounding drift.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...],
        *,
        keep: int | None = None,
        combine: Combine = "mean",
        weighting: Weighting = "none",
        storage: Literal["float32", "uint16"] = "float32",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if keep is not None and not 1 <= keep <= capacity:
            raise ValueError(f"keep must be within 1..{capacity}, got {keep}")
        if combine not in ("mean", "median", "sigma_clip"):
            raise ValueError(f"unknown combine mode {combine!r}")
        if weighting not in ("none", "quality"):
            raise ValueError(f"unknown weighting {weighting!r}")
        if storage not in ("float32", "uint16"):
            raise ValueError(f"unknown storage {storage!r}")
        self.capacity = capacity
        self.frame_shape = tuple(frame_shape)
        self.keep = capacity if keep is None else keep
        self.combine = combine
        self.weighting = weighting
        self.storage = storage
        self._buffer = np.zeros((capacity,) + self.frame_shape, dtype=np.dtype(storage))
        self._scores = np.full(capacity, -np.inf)
        self._seq = np.full(capacity, -1, dtype=np.int64)  # -1 = empty slot
        self._selected = np.zeros(capacity, dtype=bool)
        self._sum = np.zeros(self.frame_shape, dtype=np.float64)
        self._wsum = 0.0
        self._next_seq = 0
        self._since_refresh = 0

    # -- state -----------------------------------------------------------------
    def __len__(self) -> int:
        return int((self._seq >= 0).sum())

    @property
    def selected_count(self) -> int:
        return int(self._selected.sum())

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes + self._sum.nbytes

    @property
    def next_seq(self) -> int:
        """Sequence number the next pushed crop gets (0 for the first push)."""
        return self._next_seq

    def buffered_seqs(self) -> list[int]:
        """Sequence numbers of the buffered crops, oldest first."""
        return sorted(int(s) for s in self._seq[self._seq >= 0])

    def selected_seqs(self) -> list[int]:
        """Sequence numbers of the selected (stacked) crops, oldest first."""
        return sorted(int(s) for s in self._seq[self._selected])

    def _weight(self, slot: int) -> float:
        if self.weighting == "quality":
            return float(max(self._scores[slot], 0.0)) + 1e-12
        return 1.0

    def _frame(self, slot: int | np.ndarray) -> np.ndarray:
        """Buffered crop(s) as float32 working data."""
        data = self._buffer[slot]
        if self.storage == "uint16":
            return data.astype(np.float32) * np.float32(1.0 / 65535.0)
        return data

    def _accumulate(self, slot: int, sign: float) -> None:
        w = self._weight(slot)
        frame = self._frame(slot)
        if w == 1.0:
            (np.add if sign > 0 else np.subtract)(self._sum, frame, out=self._sum)
        else:
            self._sum += (sign * w) * frame
        self._wsum += sign * w

    def _select(self, slot: int) -> None:
        self._selected[slot] = True
        self._accumulate(slot, 1.0)

    def _deselect(self, slot: int) -> None:
        self._selected[slot] = False
        self._accumulate(slot, -1.0)

    def _rank_key(self, slot: int) -> tuple[float, int]:
        # Higher score wins; on a tie the newer frame wins. Deterministic.
        return float(self._scores[slot]), int(self._seq[slot])

    # -- updates ---------------------------------------------------------------
    def push(self, crop: np.ndarray, score: float = 0.0) -> None:
        """Add a registered crop with its quality score, evicting the oldest."""
        if crop.shape != self.frame_shape:
            raise FrameError(
                f"crop shape {crop.shape} does not match the stack's {self.frame_shape}"
            )
        if not np.isfinite(score):
            raise ValueError(f"score must be finite, got {score}")
        if (self._seq < 0).any():
            slot = int(np.argmax(self._seq < 0))
        else:
            slot = int(np.argmin(self._seq))
            if self._selected[slot]:
                self._deselect(slot)
        self._seq[slot] = self._next_seq
        self._next_seq += 1
        self._scores[slot] = score
        if self.storage == "uint16":
            self._buffer[slot] = np.clip(crop * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        else:
            self._buffer[slot] = crop
        self._rebalance(slot)
        self._since_refresh += 1
        if self._since_refresh >= self.capacity:
            self._refresh_sums()

    def _slot_of(self, seq: int) -> int:
        slots = np.flatnonzero(self._seq == seq)
        if slots.size == 0:
            raise KeyError(f"no buffered crop has sequence number {seq}")
        return int(slots[0])

    def replace(self, seq: int, crop: np.ndarray) -> None:
        """Replace the buffered crop pushed as ``seq`` (its score and place stay)."""
        if crop.shape != self.frame_shape:
            raise FrameError(
                f"crop shape {crop.shape} does not match the stack's {self.frame_shape}"
            )
        slot = self._slot_of(seq)
        selected = bool(self._selected[slot])
        if selected:
            self._accumulate(slot, -1.0)
        if self.storage == "uint16":
            self._buffer[slot] = np.clip(crop * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
        else:
            self._buffer[slot] = crop
        if selected:
            self._accumulate(slot, 1.0)

    def _best(self, mask: np.ndarray, *, worst: bool = False) -> int:
        """Slot with the highest (or lowest) ``(score, seq)`` among ``mask``."""
        slots = np.flatnonzero(mask)
        order = np.lexsort((self._seq[slots], self._scores[slots]))
        return int(slots[order[0] if worst else order[-1]])

    def _rebalance(self, new_slot: int) -> None:
        filled = self._seq >= 0
        target = min(self.keep, int(filled.sum()))
        # An eviction may have opened a place: the best unselected frame takes it.
        while self.selected_count < target:
            self._select(self._best(filled & ~self._selected))
        if not self._selected[new_slot]:
            worst = self._best(self._selected, worst=True)
            if self._rank_key(new_slot) > self._rank_key(worst):
                self._deselect(worst)
                self._select(new_slot)

    def _refresh_sums(self) -> None:
        self._since_refresh = 0
        self._sum[...] = 0.0
        self._wsum = 0.0
        for slot in np.flatnonzero(self._selected):
            self._accumulate(int(slot), 1.0)

    # -- results ---------------------------------------------------------------
    def mean(self) -> np.ndarray:
        """Running (weighted) mean of the selected frames, float32. Cheap."""
        if self._wsum <= 0:
            raise ValueError("the stack is empty")
        out = np.empty(self.frame_shape, dtype=np.float32)
        np.multiply(self._sum, 1.0 / self._wsum, out=out, casting="same_kind")
        return out

    def mean_without(self, seq: int) -> np.ndarray:
        """Mean of the selected frames other than the one pushed as ``seq`` (float32).

        The plain :meth:`mean` when that frame is not selected, or is the only one.
        """
        slot = self._slot_of(seq)
        w = self._weight(slot)
        if not self._selected[slot] or self._wsum - w <= 0:
            return self.mean()
        total = self._sum - w * self._frame(slot).astype(np.float64)
        return (total * (1.0 / (self._wsum - w))).astype(np.float32)

    def selected_slots(self) -> np.ndarray:
        """Buffer slots currently stacked, oldest first."""
        slots = np.flatnonzero(self._selected)
        return slots[np.argsort(self._seq[slots])]

    def result(self) -> np.ndarray:
        """The combined image of the selected frames with the configured method."""
        if self.combine == "mean":
            return self.mean()
        slots = self.selected_slots()
        if slots.size == 0:
            raise ValueError("the stack is empty")
        cube = self._frame(slots)
        if self.combine == "median":
            return np.median(cube, axis=0).astype(np.float32)
        weights = None
        if self.weighting == "quality":
            weights = np.array([self._weight(s) for s in slots])
        return sigma_clipped_mean(cube, weights=weights)


class ResizingStack:
    """The origin's stack: mean of the last N crops, each resized to the largest.

    Crops may differ in size; every call to :meth:`result` scales each to the
    largest height and largest width in the buffer (bilinear) and averages.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._crops: deque[np.ndarray] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._crops)

    def push(self, crop: np.ndarray, score: float = 0.0) -> None:  # noqa: ARG002 - same API
        self._crops.append(np.asarray(crop, dtype=np.float32))

    def common_shape(self) -> tuple[int, int]:
        return max(c.shape[0] for c in self._crops), max(c.shape[1] for c in self._crops)

    def result(self) -> np.ndarray:
        if not self._crops:
            raise ValueError("the stack is empty")
        h, w = self.common_shape()
        acc = None
        for crop in self._crops:
            scaled = crop if crop.shape[:2] == (h, w) else cv2.resize(
                crop, (w, h), interpolation=cv2.INTER_LINEAR
            )
            acc = scaled.astype(np.float64) if acc is None else acc + scaled
        assert acc is not None
        return (acc / len(self._crops)).astype(np.float32)

    mean = result
