"""Peer reference for robust's randomized-smoothing statistics (Cohen et al. 2019), from scipy.

What it produces
----------------
``tests/reference/smoothing_scipy.json``: reference values of the statistics that
randomized smoothing (Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019) needs, computed with scipy / statsmodels exactly as the
authors' code (https://github.com/locuslab/smoothing, ``code/core.py``, class ``Smooth``)
computes them. The Rust tests compare robust's own implementations against them. Nothing
here is random: the Monte Carlo counts are inputs.

Sections (all floats are IEEE doubles written with Python's ``repr``, i.e. 17 significant
digits, round-trip exact):

* ``clopper_pearson``: for n in {1, 10, 100, 1000, 100000}, several k in 0..n (always 0, 1,
  n-1, n and some in between) and alpha in {0.001, 0.01, 0.05}:

  - ``lower``: the one-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial
    proportion, as ``Smooth._lower_confidence_bound`` computes it:
    ``statsmodels.stats.proportion.proportion_confint(k, n, alpha=2*alpha, method="beta")[0]``,
    which is ``scipy.stats.beta.ppf(alpha, k, n - k + 1)`` for k > 0 and exactly 0 for k = 0
    (statsmodels sets it). For k = n it equals ``alpha ** (1 / n)``. The script asserts both
    identities (relative 1e-12);
  - ``two_sided_lo``, ``two_sided_hi``: the two-sided (1 - alpha) Clopper-Pearson interval
    ``proportion_confint(k, n, alpha=alpha, method="beta")`` = (``beta.ppf(alpha/2, k,
    n-k+1)``, ``beta.isf(alpha/2, k+1, n-k)``), with 0 at k = 0 and 1 at k = n.

* ``norm_ppf``: ``scipy.stats.norm.ppf(p)`` (the standard normal quantile Phi^-1) for p from
  1e-10 to 1 - 1e-10, including 0.5 (exactly 0) and 0.999999; and ``radius``:
  ``sigma * norm.ppf(p)`` for sigma in {0.12, 0.25, 0.5, 1.0} and a few p >= 0.5.

* ``binom_test``: the two-sided p-value of PREDICT's test,
  ``scipy.stats.binomtest(nA, nA + nB, p=0.5).pvalue`` (Cohen's code calls the older
  ``scipy.stats.binom_test(nA, nA + nB, p=0.5)``, removed in scipy 1.12; binomtest is its
  replacement with the same two-sided definition). For p = 0.5 this is
  ``min(1, 2 * binom.cdf(min(nA, nB), nA + nB, 0.5))`` (asserted, relative 1e-12).
  ``abstain`` gives PREDICT's decision for alpha in {0.001, 0.01, 0.05}: abstain iff
  ``pvalue > alpha`` (otherwise it returns the top class).

* ``certify``: CERTIFY's decision from its estimation counts: for n in {100, 1000, 10000,
  100000}, nA (count of the guessed top class) at several fractions of n, sigma in {0.12,
  0.25, 0.5, 1.0} and alpha in {0.001, 0.01}: ``pA_lower`` = the one-sided bound above
  (``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``), ``abstain`` =
  ``pA_lower < 0.5`` (so pA_lower = 0.5 exactly does *not* abstain, radius 0), and
  ``radius`` = ``sigma * norm.ppf(pA_lower)`` (0.0 when abstaining, as ``Smooth.certify``
  returns).

How to run (from the repository root)
-------------------------------------
    python -m venv /tmp/ref && /tmp/ref/bin/pip install scipy statsmodels numpy \\
        && /tmp/ref/bin/python tests/reference/smoothing_scipy.py

Options: ``--out PATH``. Versions used for the committed JSON (also recorded in it):
Python 3.11.7, scipy 1.17.1, statsmodels 0.15.0, numpy 2.4.6. The output is deterministic.

Output format
-------------
A JSON object with ``generator``, ``python``, ``scipy``, ``statsmodels``, ``numpy``, a
``definitions`` object (one line of text per section) and the sections ``clopper_pearson``,
``norm_ppf``, ``radius``, ``binom_test`` and ``certify``, each a list of records, one per line:

* clopper_pearson: ``{"k", "n", "alpha", "lower", "two_sided_lo", "two_sided_hi"}``
* norm_ppf: ``{"p", "ppf"}``; radius: ``{"sigma", "p", "radius"}``
* binom_test: ``{"nA", "nB", "pvalue", "abstain": {"0.001": bool, "0.01": .., "0.05": ..}}``
* certify: ``{"n", "nA", "alpha", "sigma", "pA_lower", "abstain", "radius"}``
"""

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import numpy
import scipy
import statsmodels
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
GENERATOR = "tests/reference/smoothing_scipy.py"
OUT_REL = "tests/reference/smoothing_scipy.json"

CP_N = [1, 10, 100, 1000, 100000]
ALPHAS = [0.001, 0.01, 0.05]
PPF_P = [1e-10, 1e-6, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.95, 0.975,
         0.99, 0.999, 0.9999, 0.99999, 0.999999, 1 - 1e-10]
SIGMAS = [0.12, 0.25, 0.5, 1.0]
RADIUS_P = [0.5, 0.6, 0.75, 0.9, 0.99, 0.999, 0.99999]
BINOM_PAIRS = [(1, 0), (2, 0), (3, 2), (5, 0), (6, 4), (9, 1), (10, 0), (8, 8), (12, 0),
               (50, 50), (55, 45), (60, 40), (61, 39), (70, 30), (90, 10), (100, 0),
               (520, 480), (530, 470), (550, 450), (600, 400), (990, 10), (1000, 0),
               (5100, 4900), (5200, 4800), (50500, 49500)]
CERT_N = [100, 1000, 10000, 100000]
CERT_FRAC = [0.3, 0.5, 0.51, 0.55, 0.6, 0.75, 0.9, 0.99, 0.999, 1.0]
CERT_ALPHAS = [0.001, 0.01]


def check_close(a, b, what, rel=1e-12):
    if not (a == b or abs(a - b) <= rel * max(abs(a), abs(b))):
        raise SystemExit(f"{what}: {a!r} != {b!r}")


def cp_lower(k, n, alpha):
    """Smooth._lower_confidence_bound(k, n, alpha) (Cohen et al.)."""
    return float(proportion_confint(k, n, alpha=2 * alpha, method="beta")[0])


def cp_ks(n):
    ks = {0, 1, n - 1, n, n // 2, (9 * n) // 10, (99 * n) // 100, (999 * n) // 1000, 2, n - 2}
    return sorted(k for k in ks if 0 <= k <= n)


def clopper_pearson():
    out = []
    for n in CP_N:
        for k in cp_ks(n):
            for alpha in ALPHAS:
                lo = cp_lower(k, n, alpha)
                ref = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
                check_close(lo, ref, f"lower k={k} n={n} alpha={alpha}")
                if k == n:
                    check_close(lo, alpha ** (1.0 / n), f"lower k=n={n} alpha={alpha}", 1e-11)
                lo2, hi2 = proportion_confint(k, n, alpha=alpha, method="beta")
                out.append({"k": k, "n": n, "alpha": alpha, "lower": lo,
                            "two_sided_lo": float(lo2), "two_sided_hi": float(hi2)})
    return out


def norm_ppf():
    ppf = [{"p": p, "ppf": float(stats.norm.ppf(p))} for p in PPF_P]
    assert ppf[PPF_P.index(0.5)]["ppf"] == 0.0
    radius = [{"sigma": s, "p": p, "radius": s * float(stats.norm.ppf(p))}
              for s in SIGMAS for p in RADIUS_P]
    return ppf, radius


def binom_test():
    out = []
    for nA, nB in BINOM_PAIRS:
        n = nA + nB
        pv = float(stats.binomtest(nA, n, p=0.5).pvalue)
        check_close(pv, min(1.0, 2.0 * float(stats.binom.cdf(min(nA, nB), n, 0.5))),
                    f"binomtest {nA},{nB}", 1e-10)
        out.append({"nA": nA, "nB": nB, "pvalue": pv,
                    "abstain": {str(a): pv > a for a in ALPHAS}})
    return out


def certify():
    out = []
    for n in CERT_N:
        for nA in sorted({min(n, int(round(f * n))) for f in CERT_FRAC}):
            for alpha in CERT_ALPHAS:
                p_lo = cp_lower(nA, n, alpha)
                abstain = p_lo < 0.5
                for sigma in SIGMAS:
                    radius = 0.0 if abstain else sigma * float(stats.norm.ppf(p_lo))
                    out.append({"n": n, "nA": nA, "alpha": alpha, "sigma": sigma,
                                "pA_lower": p_lo, "abstain": abstain, "radius": radius})
    return out


DEFINITIONS = {
    "clopper_pearson": "lower = proportion_confint(k, n, alpha=2*alpha, method='beta')[0] = "
                       "beta.ppf(alpha, k, n-k+1) (0 if k == 0); two_sided = "
                       "proportion_confint(k, n, alpha=alpha, method='beta')",
    "norm_ppf": "ppf = scipy.stats.norm.ppf(p); radius = sigma * norm.ppf(p)",
    "binom_test": "pvalue = scipy.stats.binomtest(nA, nA+nB, p=0.5).pvalue (two-sided); "
                  "PREDICT abstains iff pvalue > alpha",
    "certify": "pA_lower = proportion_confint(nA, n, alpha=2*alpha, method='beta')[0]; "
               "abstain iff pA_lower < 0.5; radius = sigma * norm.ppf(pA_lower), 0 if abstain",
}


def write(path, header, sections):
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    names = list(sections)
    for si, name in enumerate(names):
        lines.append(f"  {json.dumps(name)}: [")
        recs = sections[name]
        for i, r in enumerate(recs):
            lines.append("    " + json.dumps(r) + ("," if i + 1 < len(recs) else ""))
        lines.append("  ]" + ("," if si + 1 < len(names) else ""))
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    back = json.loads(path.read_text())
    for name in names:  # floats must round-trip exactly
        assert back[name] == sections[name], name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / OUT_REL, help="output JSON path")
    args = p.parse_args(argv)
    ppf, radius = norm_ppf()
    sections = {
        "clopper_pearson": clopper_pearson(),
        "norm_ppf": ppf,
        "radius": radius,
        "binom_test": binom_test(),
        "certify": certify(),
    }
    for recs in sections.values():
        for r in recs:
            for v in r.values():
                if isinstance(v, float) and not math.isfinite(v):
                    raise SystemExit(f"non-finite value in {r}")
    header = {
        "generator": GENERATOR,
        "python": platform.python_version(),
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__,
        "numpy": numpy.__version__,
        "definitions": DEFINITIONS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, header, sections)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in sections.items()))


if __name__ == "__main__":
    sys.exit(main())
