"""The statistics of a study (scipy, imported when computed): per arm mean and sample standard
deviation over seeds; per pair of arms the paired differences, their 95 % t confidence interval
and the Wilcoxon signed-rank p. The per-study report and ``--summary`` both use these."""

from __future__ import annotations

import math

from ..errors import SGFDError

__all__ = ["describe", "paired_difference", "paired", "require_scipy"]


def describe(values) -> dict:
    """``{"n", "mean", "std"}`` of a sample; std is the sample standard deviation (ddof = 1),
    None for fewer than 2 values."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_difference(arm, baseline) -> dict:
    """Paired differences ``d = arm - baseline`` (same seeds, same order): ``{"n", "diffs",
    "mean", "std", "ci95": [low, high] | None, "wilcoxon_p": float | None, "n_nonzero",
    "min_p": float | None}``.

    CI: ``mean ± t_{0.975, n-1} · std / sqrt(n)`` (std with ddof = 1; None for n < 2). Wilcoxon:
    two-sided signed-rank p (``scipy.stats.wilcoxon``, whose default drops zero differences; None
    when every difference is 0). ``min_p = 2 / 2^m`` over the m = ``n_nonzero`` differences the
    test ranks: the smallest p it can reach (m < 6: above 0.05; None when m = 0).
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(arm, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    m = int(np.count_nonzero(d))
    out = {"diffs": d.tolist(), **describe(d), "ci95": None, "wilcoxon_p": None,
           "n_nonzero": m, "min_p": 2.0 / 2 ** m if m else None}
    if d.size > 1:
        half = stats.t.ppf(0.975, d.size - 1) * out["std"] / math.sqrt(d.size)
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    if np.any(d != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out


def paired(arm: dict, reference: dict, keys) -> dict:
    """``{metric: paired_difference}`` of two arms' per-seed values on the seeds both finished
    (``{}`` when they share none)."""
    common = [s for s in sorted(arm) if s in reference]
    return {k: {"seeds": common, **paired_difference([arm[s][k] for s in common],
                                                     [reference[s][k] for s in common])}
            for k in keys} if common else {}


def require_scipy() -> None:
    try:
        import scipy.stats  # noqa: F401
    except ImportError as e:
        raise SGFDError(f"the study statistics need scipy ({e}); pip install "
                        f"'sgfd_fast[study]'") from None
