"""A claim's verdict per setting and per test corpus, from paired differences and two
intervals: the seed-only Student-t interval (analysis/paired.py) and the crossed seed x window bootstrap
(analysis/bootstrap.py), on each test text (the in-domain test split and the out-of-domain test corpus).

On one corpus a comparison resolves when both intervals exclude 0 on the same side. A claim "A < B" is
supported when both test corpora resolve A lower, refuted when both resolve B lower, mixed when they resolve
opposite ways, unresolved otherwise. A claim "A <= B" (the paper's Astro vs SpinQuant: level or better) is
supported as "A < B" is, refuted as well, and otherwise "not refuted" when neither corpus resolves B lower. Two
cells above COLLAPSE_FACTOR x FP on a corpus are not ranked there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .bootstrap import Bootstrap, interval_text, paired_bootstrap
from .common import LABELS, Cell, lookup
from .paired import COLLAPSE_FACTOR, MIN_SEEDS, Paired, interval, paired_difference, plain, seed_values, signed

# test role -> (PPL path, per-window NLL path) in a record; 'test' is eval.corpus's test split (metrics.ppl)
CORPORA = {"test": ("metrics.ppl", "metrics.nll_per_window"),
           "test_ood": ("metrics.sets.test_ood.ppl", "metrics.sets.test_ood.nll_per_window")}


@dataclass(frozen=True)
class Claim:
    """A vs B, lower is better; strict: 'A < B', else 'A <= B' (level or better)."""

    a: str
    b: str
    strict: bool = True

    @property
    def text(self) -> str:
        return f"{LABELS.get(self.a, self.a)} {'<' if self.strict else '<='} {LABELS.get(self.b, self.b)}"


@dataclass(frozen=True)
class OnCorpus:
    """One comparison on one test text: the paired t-interval, the bootstrap and what they resolve."""

    corpus: str
    paired: Paired
    boot: Bootstrap
    collapsed: bool

    @property
    def result(self) -> str:
        """'A lower' | 'B lower' | 'unresolved' | 'not ranked' | why there is no number."""
        p, b = self.paired, self.boot
        if p.unusable:
            return f"unusable: {p.unusable}"
        if p.n < MIN_SEEDS:
            return f"too few seeds (n={p.n})"
        if self.collapsed:
            return f"not ranked (both > {COLLAPSE_FACTOR:g}x FP)"
        if b.why:
            return f"no bootstrap: {b.why}"
        if p.resolved and b.resolved and (p.mean < 0) == (b.hi < 0):
            return "A lower" if p.mean < 0 else "B lower"
        return "unresolved"


def per_seed_nll(cell: Cell, path: str) -> dict:
    """calibration seed (None: seed-free) -> per-window NLLs at `path`, for the cell's records that have them."""
    out = {}
    for r in cell.records:
        v = lookup(r, path)
        if v is not None:
            out[r["config"]["calib"]["seed"] if "calib" in r["canonical"] else None] = v
    return out


def compare(a: Cell, b: Cell, corpus: str, fp: Cell | None = None) -> OnCorpus:
    ppl, nll = CORPORA[corpus]
    p = paired_difference(seed_values(a, ppl), seed_values(b, ppl))
    boot = paired_bootstrap(per_seed_nll(a, nll), per_seed_nll(b, nll))
    ref = fp.mean_std(ppl)[0] if fp is not None else None
    collapsed = ref is not None and all((c.mean_std(ppl)[0] or 0) > COLLAPSE_FACTOR * ref for c in (a, b))
    return OnCorpus(corpus, p, boot, collapsed)


def verdict(claim: Claim, results: list[OnCorpus]) -> str:
    """The claim's verdict from its per-corpus results (module docstring)."""
    got = [r.result for r in results]
    if len(got) < len(CORPORA):
        return "incomplete: a test corpus has no result"
    if all(g == "A lower" for g in got):
        return "supported"
    if all(g == "B lower" for g in got):
        return "refuted"
    if "A lower" in got and "B lower" in got:
        return "mixed (the corpora resolve opposite ways)"
    if any(g.startswith("not ranked") for g in got):
        return "not ranked (collapsed)"
    if any(g.startswith(("unusable", "too few", "no bootstrap")) for g in got):
        return "no verdict: " + "; ".join(g for g in got if g.startswith(("unusable", "too few", "no bootstrap")))
    if not claim.strict and "B lower" not in got:
        return "not refuted (level within the intervals)" if "A lower" not in got else "supported on one corpus"
    return "unresolved"


def rows(claim: Claim, setting: str, a: Cell | None, b: Cell | None, fp: Cell | None = None) -> list[dict]:
    """One row per test corpus (the claim's verdict on each); a missing side gives one row saying so."""
    base = {"claim": claim.text, "setting": setting}
    if a is None or b is None or not a.records or not b.records:
        lacking = [LABELS.get(m, m) for m, c in ((claim.a, a), (claim.b, b)) if c is None or not c.records]
        return [{**base, "corpus": "-", "verdict": f"missing: {', '.join(lacking)}"}]
    results = [compare(a, b, corpus, fp) for corpus in CORPORA]
    v = verdict(claim, results)
    return [{**base, "corpus": r.corpus, "n": str(r.paired.n), "mean A": plain(r.paired.mean_a),
             "mean B": plain(r.paired.mean_b), "A - B": "-" if r.paired.mean is None else signed(r.paired.mean),
             "95% t-interval (seeds)": interval(r.paired), "95% bootstrap (seeds x windows)": interval_text(r.boot),
             "on this corpus": r.result, "verdict": v} for r in results]


COLUMNS = ["claim", "setting", "corpus", "n", "mean A", "mean B", "A - B", "95% t-interval (seeds)",
           "95% bootstrap (seeds x windows)", "on this corpus", "verdict"]


def table(claims: list[Claim], cells_by: dict[tuple[str, str], Cell], settings: list[str],
          fp_of: dict[str, Cell] | None = None) -> pd.DataFrame:
    """Each claim in each setting (a key of cells_by is (setting, method name)); fp_of: setting -> FP cell."""
    out = []
    for claim in claims:
        for s in settings:
            a, b = cells_by.get((s, claim.a)), cells_by.get((s, claim.b))
            if a is None and b is None:
                continue   # the claim does not apply to that setting (e.g. Table 7 is W3 only)
            out += rows(claim, s, a, b, (fp_of or {}).get(s))
    return pd.DataFrame(out, columns=COLUMNS).fillna("-")


CAPTION = ("Each claim per setting and test corpus (test: the in-domain test split; test_ood: the out-of-domain "
           "test corpus). A - B is the mean over calibration seeds of the PPL difference (lower is better); the "
           "t-interval resamples nothing and sees only the seeds; the bootstrap resamples seeds and test windows "
           "together (crossed, analysis/bootstrap.py). A corpus resolves when both intervals exclude 0 on the same "
           "side; a claim is supported when both corpora resolve in its direction, refuted when both resolve the "
           "other way.")
