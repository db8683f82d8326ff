"""Caffe layers written directly from Caffe's definitions: the references the prototxt layer tests compare
the compiled graphs with."""

from __future__ import annotations

import math

import numpy as np


def caffe_pool(x: np.ndarray, k: int, s: int, p: int, method: str, ceil: bool) -> np.ndarray:
    """Caffe's PoolingLayer forward, written from its definition (output size, windows, divisor)."""
    n, c, h, w = x.shape

    def size(d: int) -> int:
        out = (math.ceil if ceil else math.floor)((d + 2 * p - k) / s) + 1
        if p and (out - 1) * s >= d + p:
            out -= 1
        return out

    ph, pw = size(h), size(w)
    y = np.zeros((n, c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            area = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / area
    return y
