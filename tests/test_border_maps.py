"""The border study: a map hot along the border shows as a ratio above 1 and maxima there."""

from __future__ import annotations

import numpy as np
from studies.border_maps import border_mask, border_report


def test_the_band_is_the_frame_of_the_given_width() -> None:
    mask = border_mask(8, 2)
    assert mask[:2].all() and mask[:, -2:].all() and not mask[2:-2, 2:-2].any()


def _ratio(line: str) -> float:
    return float(line.split("mean ")[1].split(",")[0])


def test_a_hot_frame_is_reported_and_a_hot_middle_is_not() -> None:
    hot_middle = np.ones((3, 16, 16), np.float32)
    hot_middle[:, 8, 8] = 9.0
    hot_frame = np.ones((3, 16, 16), np.float32)
    hot_frame[:, 0, 5] = 9.0
    (middle,) = border_report(hot_middle, (4,))
    (frame,) = border_report(hot_frame, (4,))
    assert "on 0 of 3 good images" in middle and _ratio(middle) < 1.0
    assert "on 3 of 3 good images" in frame and _ratio(frame) > 1.0
