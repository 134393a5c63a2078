"""The four float64 moments every one-layer closed form reduces to (docs/theory.md §3)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Moments"]


class Moments(NamedTuple):
    """``S = E[x x^T]``, ``G = E[h (y_q x_q)^T]``, ``H = E[h h^T]`` (``[d, d]``) and ``A = E[y_q^2]``."""

    s: np.ndarray
    g: np.ndarray
    h: np.ndarray
    a: float
