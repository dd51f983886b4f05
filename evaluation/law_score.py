"""A quality score for pictures of a known law (``laws.py``): works offline, on a few hundred samples.

- ``valid``: the fraction of samples that are valid objects of the law (``law.parse``).
- ``param_distance``: how far the parameters of the valid samples are from the law's own
  distribution, averaged over parameters: 1-D Wasserstein distance in units of the law's standard
  deviation for continuous ones, total variation for categorical ones. 0 is a perfect match.
- ``spread``: standard deviation (continuous) and entropy (categorical) of the valid samples'
  parameters relative to the law's, each capped at 1, averaged. Capped, because more variance than the
  law's is not more variety: uncapped, an over-spread position would hide a collapsed colour in the mean.
  A collapsed generator scores far below 1, and ``collapsed`` says so when it is under
  ``COLLAPSE_SPREAD``, or when one parameter is frozen. ``per_param`` keeps the uncapped values.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from projgan.evaluation.laws import get_law, law_params

COLLAPSE_SPREAD = 0.5
LAW_DRAWS = 2000  # parameter draws that stand for the law's distribution
LAW_SEED = 987654321  # a seed no dataset uses, so the reference is not the training set itself


def _values(params: list[dict], key: str) -> np.ndarray:
    out: list = []
    for p in params:
        v = p[key]
        out.extend(v if isinstance(v, list) else [v])
    return np.asarray(out)


def _tv(a: np.ndarray, b: np.ndarray, support) -> float:
    ca, cb = Counter(a.tolist()), Counter(b.tolist())
    return 0.5 * sum(abs(ca[s] / max(len(a), 1) - cb[s] / max(len(b), 1)) for s in support)


def _entropy(a: np.ndarray, support) -> float:
    c = Counter(a.tolist())
    p = np.asarray([c[s] for s in support], np.float64) / max(len(a), 1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def law_score(images: np.ndarray, law: str) -> dict:
    """Score uint8 ``[N, H, W, 3]`` pictures against ``law``; returns a flat dict of numbers."""
    from scipy.stats import wasserstein_distance

    spec = get_law(law)
    parsed = [spec.parse(im) for im in images]
    ok = [p.params for p in parsed if p.valid]
    reasons = Counter(p.reason for p in parsed if not p.valid)
    out: dict = {"law": law, "n": len(images), "valid": round(len(ok) / max(len(images), 1), 4)}
    ref = law_params(law, LAW_DRAWS, LAW_SEED)
    dist, spread = {}, {}
    if len(ok) >= 2:
        for key in spec.continuous:
            a, b = _values(ok, key).astype(np.float64), _values(ref, key).astype(np.float64)
            dist[key] = wasserstein_distance(a, b) / b.std()
            spread[key] = a.std() / b.std()
        for key, support in spec.categorical.items():
            if len(support) < 2:
                continue  # a constant of the law: nothing to compare
            a, b = _values(ok, key), _values(ref, key)
            dist[key] = _tv(a, b, support)
            spread[key] = _entropy(a, support) / max(_entropy(b, support), 1e-12)
        out["param_distance"] = round(float(np.mean(list(dist.values()))), 4)
        out["spread"] = round(float(np.mean([min(v, 1.0) for v in spread.values()])), 4)
        # Collapse: little spread overall, or one parameter (a kind, a count) all but frozen.
        out["collapsed"] = bool(out["spread"] < COLLAPSE_SPREAD or min(spread.values()) < COLLAPSE_SPREAD / 2)
        out["per_param"] = {k: {"distance": round(float(dist[k]), 4), "spread": round(float(spread[k]), 4)}
                            for k in dist}
    else:  # nothing to compare: report the worst values rather than none
        out.update(param_distance=None, spread=0.0, collapsed=True, per_param={})
    out["invalid_reasons"] = dict(reasons.most_common(5))
    return out
