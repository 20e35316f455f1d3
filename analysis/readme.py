"""README.md's "results at a glance" block, generated from the report's summary (docs/report/summary.json), never
typed: Table 1 for both models (mean ± std over calibration seeds), the verdict on each of the paper's claims with
its intervals, and Fig. 3. While the current protocol has no archived record, the block says its reruns are pending
and shows the earlier protocol's Table 1, claims and Fig. 3 under that protocol's name (analysis/earlier.py).

The block lies between the markers BEGIN and END in README.md. `make report-publish` writes the summary from the
archive and rewrites the block (analysis/report.py --publish); tests/test_report.py checks that the committed
block is what the committed summary renders, and that the summary was made from the archive as it is now (the
snapshots and records archive/manifest.yaml names), so neither can go stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from astro.results import RECORD, RECORD_GZ

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SUMMARY = ROOT / "docs" / "report" / "summary.json"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
NOT_MEASURED = "not measured yet"
# cells without a number (analysis/table1.py)
EMPTY = ("missing", "not run", "n/a", "selection incomplete", "diverged")


def fingerprint(manifest: dict, archive: Path) -> dict:
    """Per protocol: its snapshots, how many records they hold and a hash of their names (snapshot/key), so a
    summary made from another archive differs."""
    out = {}
    for name, spec in manifest["protocols"].items():
        snaps = list(spec.get("snapshots") or [])
        keys = sorted(f"{s}/{d.name}" for s in snaps for d in (archive / s).iterdir()
                      if d.is_dir() and ((d / RECORD_GZ).exists() or (d / RECORD).exists()))
        out[name] = {"snapshots": snaps, "records": len(keys),
                     "hash": hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]}
    return out


def _cell(v: str) -> str:
    return NOT_MEASURED if v == "missing" else v


def _measured(v: str) -> bool:
    return not any(v.startswith(e) for e in EMPTY)


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s):
        return str(s).replace("|", r"\|")
    return ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(esc, r)) + " |" for r in rows)]


def table1_lines(t1: dict) -> list[str]:
    """Table 1 per model: our columns (the paper's reported ones are in the report)."""
    out = []
    models = list(dict.fromkeys(c.split(" ")[0] for c in t1["columns"][1:] if not c.startswith("reported")))
    for model in models:
        cols = [c for c in t1["columns"] if c.startswith(model + " ")]
        rows = [[r["method"], *(_cell(r[c]) for c in cols)] for r in t1["rows"]
                if any(r[c] not in ("not run", "n/a") for c in cols)]   # e.g. a method the paper reports only
        out += ["", f"*{model}*", "", *_md(["method", *(c.split(" ", 1)[1] for c in cols)], rows)]
    return out


def claims_lines(claims: list[dict]) -> list[str]:
    """One row per claim and setting measured on both sides: its verdict and, per test text, A - B with the
    seed-only t-interval and the seed x window bootstrap."""
    by: dict[tuple, dict] = {}
    for r in claims:
        if r["verdict"].startswith("missing"):
            continue
        row = by.setdefault((r["claim"], r["setting"]), {"verdict": r["verdict"]})
        row[r["corpus"]] = f"{r['A - B']} {r['95% t-interval (seeds)']} / {r['95% bootstrap (seeds x windows)']}"
    rows = [[c, s, v["verdict"], v.get("test", "-"), v.get("test_ood", "-")] for (c, s), v in by.items()]
    return _md(["claim", "setting", "verdict", "test: A - B, t-interval / bootstrap",
                "out-of-domain test: A - B, t-interval / bootstrap"], rows)


def earlier_claims_lines(claims: list[dict]) -> list[str]:
    """An earlier protocol's claims (analysis/earlier.py): one row per claim, one column per setting, each cell
    its verdict with A - B and the seed t-interval."""
    settings = list(dict.fromkeys(r["setting"] for r in claims))
    by: dict[str, dict] = {}
    for r in claims:
        by.setdefault(r["claim"], {})[r["setting"]] = f"{r['verdict']}: {r['A - B']} {r['95% t-interval (seeds)']}"
    return _md(["claim", *settings], [[c, *(v.get(s, "-") for s in settings)] for c, v in by.items()])


def earlier_lines(view: dict, current: str) -> list[str]:
    """An earlier protocol's Table 1, claims and Fig. 3 under its own name, said not to be the current one's."""
    p = view["protocol"]
    lines = ["", f"Until then, here is the **earlier protocol, {p}**, as its archived records give it. These are "
             f"**not {current}'s numbers**: {p} chose its tuned settings (MagR's and Astro's beta among them) on the "
             "same test windows it scored, so its tuned gains are optimistic "
             "([what it found](docs/embedded-v1-evidence.md)).",
             "", f"**Table 1 under {p}**: test perplexity, mean ± std over calibration seeds (n); 'n/a': the method "
             "does not apply to the model.", *table1_lines(view["table1"])]
    if view["claims"]:
        lines += ["", f"**The paper's claims under {p}**: verdict, A - B (mean over the shared seeds; lower is "
                  "better) and its 95% seed t-interval on the one test text; 'not ranked': both cells above 5x FP.",
                  "", *earlier_claims_lines(view["claims"])]
    if view.get("fig3"):
        lines += ["", f"![Fig. 3 under {p}: perplexity vs quantization time](docs/report/{view['fig3']})"]
    return lines


def snapshot_text(snaps: list[str], most: int = 8) -> str:
    """'no archived snapshot', or the snapshots' names (the first `most`, then how many more)."""
    if not snaps:
        return "no archived snapshot"
    more = f" and {len(snaps) - most} more" if len(snaps) > most else ""
    return f"archive snapshots {', '.join(f'`{s}`' for s in snaps[:most])}{more}"


def render(summary: dict) -> str:
    """The block (markers included) for a summary written by analysis/report.py."""
    proto, arch = summary["protocol"], summary["archive"][summary["protocol"]]
    lines = [BEGIN, "<!-- generated by `make report-publish` from archive/ (analysis/readme.py): edits here are "
             "overwritten -->", "",
             f"Protocol **{proto}** ([docs/protocol.md](docs/protocol.md)): {snapshot_text(arch['snapshots'])}, "
             f"{arch['records']} record(s). Every table and figure, with captions naming their records, machines and "
             "protocol: [docs/report/index.html](docs/report/index.html) (`make report`)."]
    t1 = summary["table1"]
    measured = t1 is not None and any(_measured(r[c]) for r in t1["rows"] for c in t1["columns"][1:]
                                      if not c.startswith("reported"))
    if not measured:
        lines += ["", f"**Not measured yet under {proto}: its reruns are pending** (`make study`). No record of it "
                  "is archived (archive/manifest.yaml), so Table 1, the claims and Fig. 3 have no number under it "
                  "yet; this block and the report fill in when its snapshots are added."]
        for view in summary.get("earlier") or []:
            lines += earlier_lines(view, proto)
    else:
        lines += ["", "**Table 1**: test perplexity, mean ± std over calibration seeds (n); MagR and Astro at the "
                  "beta chosen on validation text.", *table1_lines(t1)]
        cl = claims_lines(summary["claims"] or [])
        lines += ["", "**The paper's claims**: a claim is supported when both test texts resolve it (both intervals "
                  "exclude 0).", ""] + (cl if len(cl) > 2 else ["No claim has both sides measured yet."])
        if summary.get("fig3"):
            lines += ["", f"![Fig. 3: perplexity vs quantization time](docs/report/{summary['fig3']})"]
    return "\n".join([*lines, "", END])


def rewrite(text: str, block: str) -> str:
    """README text with its results block replaced by `block`."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return head + block + tail


def current_block(text: str) -> str:
    _, _, rest = text.partition(BEGIN)
    body, _, _ = rest.partition(END)
    return BEGIN + body + END


def load_summary(path: Path = SUMMARY) -> dict:
    return json.loads(path.read_text())
