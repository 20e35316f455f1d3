"""make report: every table and figure, regenerated from archive/ into one HTML page (results/report/index.html).

  python -m analysis.report [--out results/report] [--publish] [overrides...]

archive/manifest.yaml's `report` says which analysis script makes each artifact and which protocol's snapshots it
reads: no snapshot is merged by hand. Each script reads those snapshots alone (never results/store, so the page is
the archive's) and writes its tables and figures as `make reproduce-*` does; the page shows them with their
captions (which records, machines and numeric regime) under the protocol's name and snapshots. A script that has
nothing to draw yet says why. A cell without a record reads 'missing', and the page lists for each the fields in
which the closest record differs (of the same protocol, else of an earlier protocol: analysis.common
`explaining_from`). Records of an earlier protocol, which today's grids do not compose, are never mapped onto
today's tables: under that protocol's name the page shows its Table 1, claims and Fig. 3 as that protocol composed
them (analysis/earlier.py, from the manifest's account of it), then every record grouped by configuration
(analysis/digest.py).

--publish writes the page into docs/report/ instead (tracked, small PNGs: the README links to it and shows its
Fig. 3), with summary.json, and rewrites README.md's results block from it (analysis/readme.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from astro.results import atomic_write_text
from experiments.grid import CONF, reusing_points

from . import common, digest, readme
from . import earlier as earlier_protocol
from .report_html import page

log = logging.getLogger(__name__)
MAX_WIDTH = 1400   # figure width in the page, px (page width; the PNGs stay small)


@dataclass
class Table:
    name: str
    caption: str
    df: pd.DataFrame


@dataclass
class Artifact:
    """One analysis script's output for the page."""

    name: str
    title: str
    script: str
    protocol: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)      # file names under the page's figures/
    note: str | None = None          # why the script drew nothing (its own message)
    failed: str | None = None        # an error: the page says so and `make report` exits non-zero
    missing: list[str] = field(default_factory=list)     # why each missing cell is missing
    log: list[str] = field(default_factory=list)         # other warnings (records left out, invalid files)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def read_table(csv: Path) -> Table:
    """A table as write_table wrote it: the CSV, and the caption that leads its Markdown file."""
    md = csv.with_suffix(".md").read_text().split("\n\n", 1)[0]
    caption = md.split(". ", 1)[1] if md.startswith("**") and ". " in md else md
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:   # a table with no row and no column (nothing recorded to list)
        df = pd.DataFrame()
    return Table(csv.stem, caption, df)


def shrink(src: Path, dest: Path) -> None:
    """The figure at most MAX_WIDTH px wide, as an optimised PNG."""
    from PIL import Image
    with Image.open(src) as im:
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
        im.save(dest, optimize=True)


def title_of(name: str, script: str) -> str:
    """The artifact its experiment config names (conf/experiment/<name>.yaml), else the first sentence of the
    script's docstring."""
    exp = CONF / "experiment" / f"{name}.yaml"
    if exp.exists():
        artifact = (yaml.safe_load(exp.read_text()).get("experiment") or {}).get("artifact")
        if artifact:
            return artifact
    doc = (importlib.import_module(f"analysis.{script}").__doc__ or script).strip().split("\n\n")[0]
    return " ".join(doc.split()).split(". ")[0]


def run_artifact(name: str, spec: dict, protocol: str, scale: str, empty_store: Path, work: Path, figures: Path,
                 overrides: tuple[str, ...], has_records: bool) -> Artifact:
    """Run one analysis script on the protocol's snapshots alone; collect its tables, figures and log."""
    script = spec.get("script", name)
    art = Artifact(name, spec.get("title") or title_of(name, script), script, protocol)
    out = work / name
    argv = ["--archive", "--protocol", protocol, "--store", str(empty_store), "--out", str(out), "--scale", scale,
            *map(str, spec.get("args", [])), *overrides]
    capture = _Capture()
    logger = logging.getLogger("analysis")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(capture)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            importlib.import_module(f"analysis.{script}").main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            art.note = str(e.code)
    except Exception as e:   # the page says which script failed and how; make report exits non-zero
        log.exception("%s failed", name)
        art.failed = f"{type(e).__name__}: {e}"
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    lines = list(dict.fromkeys(capture.lines))
    art.missing = [m for m in lines if m.startswith("missing ")]
    art.log = [m for m in lines if not m.startswith(("missing ", "wrote "))]
    art.tables = [read_table(p) for p in sorted(out.glob("*.csv"))] if out.exists() else []
    if has_records and out.exists():   # a figure of no record is an empty frame: the tables say what is missing
        for png in sorted(out.glob("*.png")):
            shrink(png, figures / f"{name}-{png.name}")
            art.figures.append(f"{name}-{png.name}")
    return art


def digest_of(protocol: str, records: list[tuple[str, dict]], spec: dict, figures: Path) -> dict:
    """An earlier protocol's section: its Table 1, claims and Fig. 3 as that protocol composed them
    (analysis/earlier.py, when the manifest gives its `tables`), then every record grouped by configuration."""
    gs, left = digest.groups(records)
    out = {"protocol": protocol, "description": spec.get("description", ""), "table": digest.table(gs),
           "groups": len(gs), "probes": left["probe records"], "set_aside": spec.get("set_aside") or [],
           "view": None}
    view = earlier_protocol.view_of(protocol)
    if view is None:
        return out
    t = earlier_protocol.build(records, view)
    fig3 = None
    fig = earlier_protocol.fig3_figure(t)
    if fig is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = common.save_figure(fig, "fig3_efficiency", protocol, Path(tmp))[0]
            fig3 = f"{protocol}-{png.name}"
            shrink(png, figures / fig3)
    out["view"] = {"table1": t.table1, "claims": t.claims, "fig3": fig3,
                   "fig3_machines": common.machines_phrase(t.fig3) if t.fig3 else "",
                   "settings": {"config": view.config, "beta": view.beta}}
    return out


def _rows(df: pd.DataFrame) -> dict:
    return {"columns": list(df.columns), "rows": df.to_dict("records")}


def glance(arts: dict[str, Artifact], protocol: str, fingerprint: dict, digests: list[dict]) -> dict:
    """What README.md's results block shows (analysis/readme.py renders it): the current protocol's Table 1,
    claims and Fig. 3, and each earlier protocol's as that protocol composed them (shown while the current one
    has no number)."""
    def table(art_name: str, table_name: str):
        art = arts.get(art_name)
        t = next((t for t in (art.tables if art else []) if t.name == table_name), None)
        return None if t is None else _rows(t.df)
    t1 = table("table1", "table1_embedded")
    claims = table("claims", "claims_embedded")
    fig3 = arts.get("fig3_efficiency")
    earlier_views = [{"protocol": d["protocol"], "table1": _rows(d["view"]["table1"]),
                      "claims": d["view"]["claims"].to_dict("records"),
                      "fig3": f"figures/{d['view']['fig3']}" if d["view"]["fig3"] else None}
                     for d in digests if d.get("view")]
    return {"protocol": protocol, "archive": fingerprint, "table1": t1,
            "claims": claims["rows"] if claims else None,
            "fig3": f"figures/{fig3.figures[0]}" if fig3 and fig3.figures else None,
            "earlier": earlier_views}


def build(out: Path, archive: Path = common.ARCHIVE, overrides: tuple[str, ...] = ()) -> tuple[list[Artifact], dict]:
    """Write the page (and its figures) into `out` from the archive at `archive`; returns the artifacts and the
    summary."""
    manifest = yaml.safe_load((archive / "manifest.yaml").read_text())
    rep = manifest["report"]
    current = rep.get("protocol", manifest["current"])
    scale = rep.get("scale", "embedded")
    fp = readme.fingerprint(manifest, archive)
    earlier = list(rep.get("digests", []))
    figures = out / "figures"
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    with common.using_archive(archive):
        pool = {p: earlier_protocol.protocol_records(p) for p in earlier}
        explain = [(f"{p}: {where}", r) for p in earlier for where, r in pool[p]]
        arts: list[Artifact] = []
        with tempfile.TemporaryDirectory() as tmp, reusing_points(), common.explaining_from(explain):
            empty = Path(tmp) / "empty-store"
            empty.mkdir()
            for name, spec in rep["artifacts"].items():
                spec = spec or {}
                protocol = spec.get("protocol", current)
                log.info("report: %s (%s)", name, protocol)
                arts.append(run_artifact(name, spec, protocol, scale, empty, Path(tmp), figures, overrides,
                                         fp[protocol]["records"] > 0))
        digests = [digest_of(p, pool[p], manifest["protocols"][p], figures) for p in earlier]
    summary = glance({a.name: a for a in arts}, current, fp, digests)
    html = page(arts, digests, manifest, fp, current, summary)
    atomic_write_text(out / "index.html", html)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return arts, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="default: results/report (docs/report with --publish)")
    ap.add_argument("--publish", action="store_true",
                    help="write into docs/report and rewrite README.md's results block")
    ap.add_argument("--archive", type=Path, default=common.ARCHIVE, help="the archive (its manifest.yaml)")
    ap.add_argument("overrides", nargs="*", help="passed to every analysis script (as a make target's ARGS)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out or (readme.SUMMARY.parent if a.publish else Path("results/report"))
    arts, summary = build(out, a.archive, tuple(a.overrides))
    if a.publish:
        text = readme.README.read_text()
        atomic_write_text(readme.README, readme.rewrite(text, readme.render(summary)))
        log.info("rewrote README.md's results block")
    failed = [x.name for x in arts if x.failed]
    log.info("wrote %s (%d artifacts%s)", out / "index.html", len(arts),
             f"; FAILED: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
