"""Sorted int64 keys: the vectorised set operations every stage shares (a leaf module: it
imports nothing of twotower's).

A (user, item) pair becomes one int64 (`pair_keys`); sets of pairs are sorted unique key arrays,
and membership is a binary search (`find`, `is_member`), never a Python loop or a hash set.
"""

from __future__ import annotations

import numpy as np


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """One int64 per (user, item) pair: users * (n_items + 1) + items."""
    return np.asarray(users).astype(np.int64) * (n_items + 1) + np.asarray(items).astype(np.int64)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of an int array by sort + neighbour mask (numpy 2.4's np.unique is hash-based
    and ~40x slower on 10M int64)."""
    s = np.sort(np.asarray(values).ravel())
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if len(s) else s


def row_keys(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """The sorted unique pair keys of (row, item) pairs."""
    return sorted_unique(pair_keys(rows, items, n_items))


def find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found): where each of `keys` sits in the sorted array `sorted_keys` (clipped
    to a valid row) and whether it is there."""
    keys = np.asarray(keys)
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=np.int64), np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


def is_member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of `keys` is in the sorted array `sorted_keys`."""
    return find(sorted_keys, keys)[1]
