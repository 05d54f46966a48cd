"""How fresh a candidate must be, measured from the data (`twotower preprocess dataset=news`,
`dataset.load.candidate_days: auto`): item ages at click and the pool window they call for."""

from __future__ import annotations

import numpy as np

HOUR = 3600
AGE_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def pool_window(ages: np.ndarray, times: np.ndarray, period_end: int, period: int,
                target: float) -> float:  # fmt: skip
    """Seconds of creation time a pool must reach back from the test period's end to hold
    `target` of the clicks, measured on earlier clicks (their item's age at click, `ages`,
    at `times`).

    A test click at time t on an item of age a is in the pool [end - W, end] when
    a + (end - t) <= W; each earlier click is placed at the same time of day within a period of
    the test's length (end - t = (period_end - t) mod period), so the window is the `target`
    quantile of a + (end - t), rounded up to the hour.
    """
    if len(ages) == 0:
        raise ValueError("no clicks before the held-out period to measure article ages on")
    to_end = (period_end - np.asarray(times)) % period
    need = np.quantile(np.asarray(ages) + to_end, target)
    return float(np.ceil(need / HOUR) * HOUR)


def age_quantiles(ages: np.ndarray) -> dict[str, float]:
    """Item age at click, in hours, at AGE_QUANTILES (for the preprocess manifest)."""
    q = np.quantile(np.asarray(ages, dtype=np.float64), AGE_QUANTILES) / HOUR
    return {f"click_age_hours_p{round(p * 100)}": round(float(v), 2)
            for p, v in zip(AGE_QUANTILES, q, strict=True)}  # fmt: skip


def click_age_log_density(ages: np.ndarray, max_hours: int) -> np.ndarray:
    """log of the share of clicks per hour of item age, hours 0..max_hours - 1 (add-one
    smoothed, so no hour is impossible): how the data's attention decays with age."""
    hours = np.clip(np.asarray(ages) // HOUR, 0, max_hours - 1).astype(np.int64)
    counts = np.bincount(hours, minlength=max_hours).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def period_log_prior(created: np.ndarray, start: int, end: int,
                     log_density: np.ndarray) -> np.ndarray:  # fmt: skip
    """log of each item's expected share of clicks over [start, end) by its age alone: the
    click-age density averaged over the period's hours (0 while the item does not exist yet,
    the last hour's density past the measured ages). One ranking serves the whole period, so
    an item created half-way through it gets half its freshest hours."""
    hours = np.arange(start, end, HOUR)[:, None]
    age = (hours - np.asarray(created, np.int64)[None, :]) // HOUR
    density = np.exp(log_density)[np.clip(age, 0, len(log_density) - 1)]
    share = np.where(age >= 0, density, 0.0).mean(0)
    return np.log(np.maximum(share, 1e-12))


def log_virality(created: np.ndarray, clicked_items: np.ndarray, start: int, end: int,
                 log_density: np.ndarray, pseudo: float = 1.0) -> np.ndarray:  # fmt: skip
    """log of how much more each item was clicked in [start, end) than its age alone predicts:
    log((clicks + pseudo) / (expected + pseudo)), expected = the period's clicks shared out by
    each item's age (period_log_prior); an item with no clicks and none expected gets 0."""
    clicks = np.bincount(clicked_items - 1, minlength=len(created)).astype(np.float64)
    share = np.exp(period_log_prior(created, start, end, log_density))
    share[share < 1e-11] = 0.0  # period_log_prior's floor (1e-12): not alive in the period
    expected = clicks.sum() * share / max(share.sum(), 1e-12)
    return np.log((clicks + pseudo) / (expected + pseudo))
