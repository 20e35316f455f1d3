"""The report (make report), the README's generated results block, the earlier protocols' digest and the
quickstart's comparison with Table 1's cells. The browser check of the committed page is slow-marked."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from analysis import common, digest, readme
from analysis.common import Cell, closest, explaining_from
from astro.config import CalibConfig, EvalConfig, RunConfig
from astro.methods import MethodConfig
from astro.models import ModelConfig
from astro.quantizer import QuantGrid
from astro.results import build_record, now_iso, run_key

ROOT = Path(__file__).resolve().parents[1]


def config(method: str = "gptq", n_samples: int = 32, seed: int = 0, beta: float = 1e-3, bits: int = 3) -> RunConfig:
    return RunConfig(model=ModelConfig("tiny-random-llama"), calib=CalibConfig("wiki_offline", n_samples, 64, seed),
                     eval=EvalConfig("wiki_offline", 64, 4), quant=QuantGrid(bits, 64),
                     method=MethodConfig(method, beta=beta, iters=5))


def record(cfg: RunConfig, ppl: float, experiment: str = "table1", nll: list[float] | None = None, **metrics) -> dict:
    m = {"ppl": ppl, **({"nll_per_window": nll} if nll else {}), **metrics}
    return build_record(cfg, run_key(cfg), experiment=experiment, scale="embedded", started=now_iso(), metrics=m,
                        timings={"method": 10.0 * ppl})


# --- README's results block ------------------------------------------------------------------------------------


def test_readme_block_is_what_the_committed_summary_renders():
    """The block between the markers is generated: editing it by hand, or the summary without rewriting it, fails."""
    text = readme.README.read_text()
    assert readme.current_block(text) == readme.render(readme.load_summary())


def test_committed_summary_was_made_from_the_archive_as_it_is():
    """A snapshot added to (or removed from) the manifest, or a record added to one, changes the fingerprint: the
    summary (and so the README block and docs/report) must then be regenerated (make report-publish)."""
    assert readme.load_summary()["archive"] == readme.fingerprint(common.manifest(), common.ARCHIVE)


def test_fingerprint_changes_with_a_record(tmp_path):
    (tmp_path / "snap" / "k1").mkdir(parents=True)
    (tmp_path / "snap" / "k1" / "record.json.gz").write_bytes(b"")
    man = {"protocols": {"p": {"snapshots": ["snap"]}}}
    before = readme.fingerprint(man, tmp_path)
    (tmp_path / "snap" / "k2").mkdir()
    (tmp_path / "snap" / "k2" / "record.json").write_text("{}")
    after = readme.fingerprint(man, tmp_path)
    assert before["p"]["records"] == 1 and after["p"]["records"] == 2 and before["p"]["hash"] != after["p"]["hash"]


def summary(measured: bool) -> dict:
    cell = "29.64 ± 0.13 (n=3)" if measured else "missing"
    cols = ["method", "smollm2-135m w3g64", "gemma3-270m w3g64", "reported llama2-7b w3g128"]
    rows = [{"method": "GPTQ", cols[1]: cell, cols[2]: "missing", cols[3]: "6.29"},
            {"method": "OmniQuant", cols[1]: "not run", cols[2]: "not run", cols[3]: "6.03"}]
    claims = [{"claim": "GPTQ < RTN", "setting": "smollm2-135m w3g64", "corpus": c, "A - B": "-21.00",
               "95% t-interval (seeds)": "[-22.00, -20.00]", "95% bootstrap (seeds x windows)": "[-23.00, -19.00]",
               "verdict": "supported"} for c in ("test", "test_ood")] if measured else []
    return {"protocol": "p2", "archive": {"p2": {"snapshots": ["s"] if measured else [], "records": 9 * measured,
                                                 "hash": "x"}},
            "table1": {"columns": cols, "rows": rows}, "claims": claims,
            "fig3": "figures/fig3.png" if measured else None}


def earlier_view() -> dict:
    cols = ["method", "m1 w3g64", "m1 w4g64"]
    rows = [{"method": "GPTQ", cols[1]: "31.75 ± 0.07 (n=3)", cols[2]: "18.51 ± 0.09 (n=3)"},
            {"method": "QuaRot+RTN", cols[1]: "n/a", cols[2]: "n/a"}]
    claims = [{"claim": "GPTQ < RTN", "setting": s, "n": "3", "mean A": "31.75", "mean B": "52.75", "A - B": "-21.00",
               "95% t-interval (seeds)": "[-21.17, -20.82]", "verdict": "supported"} for s in cols[1:]]
    return {"protocol": "p1", "table1": {"columns": cols, "rows": rows}, "claims": claims,
            "fig3": "figures/p1-fig3.png"}


def test_block_says_not_measured_yet_without_records_and_shows_the_numbers_with_them():
    empty = readme.render(summary(False))
    assert "Not measured yet under p2: its reruns are pending" in empty
    assert "| GPTQ |" not in empty and "![" not in empty
    # with an earlier protocol's view: its numbers under its own name, said not to be the current protocol's
    pending = readme.render({**summary(False), "earlier": [earlier_view()]})
    lines = pending.splitlines()
    assert "reruns are pending" in pending and "**not p2's numbers**" in pending
    assert "**Table 1 under p1**" in pending and "| GPTQ | 31.75 ± 0.07 (n=3) | 18.51 ± 0.09 (n=3) |" in lines
    assert not any(x.startswith("| QuaRot+RTN") for x in lines)            # n/a in every column: no row
    assert "| GPTQ < RTN | supported: -21.00 [-21.17, -20.82] | supported: -21.00 [-21.17, -20.82] |" in lines
    assert "![Fig. 3 under p1: perplexity vs quantization time](docs/report/figures/p1-fig3.png)" in lines
    assert pending.index("reruns are pending") < pending.index("Table 1 under p1")
    # once the current protocol has numbers, the earlier one is not shown in the block
    assert "under p1" not in readme.render({**summary(True), "earlier": [earlier_view()]})
    full = readme.render(summary(True))
    lines = full.splitlines()
    assert "| GPTQ | 29.64 ± 0.13 (n=3) |" in lines and "| GPTQ | not measured yet |" in lines   # per model
    assert not any("OmniQuant" in x for x in lines) and not any("6.29" in x for x in lines)   # ours only
    row = next(x for x in lines if x.startswith("| GPTQ < RTN"))
    assert "supported" in row and row.count("[-22.00, -20.00] / [-23.00, -19.00]") == 2   # both test texts
    assert "(docs/report/figures/fig3.png)" in full


def test_rewrite_replaces_the_block_and_nothing_else():
    text = f"# T\n\nbefore\n{readme.BEGIN}\nold\n{readme.END}\nafter\n"
    out = readme.rewrite(text, f"{readme.BEGIN}\nnew\n{readme.END}")
    assert out == f"# T\n\nbefore\n{readme.BEGIN}\nnew\n{readme.END}\nafter\n"
    with pytest.raises(ValueError, match="no <!-- results:begin -->"):
        readme.rewrite("no block", "x")


# --- an earlier protocol's records, as they are ------------------------------------------------------------------


def test_digest_groups_seeds_of_one_computation_and_names_what_differs():
    recs = [record(config(seed=s), p) for s, p in ((0, 30.0), (1, 32.0), (2, 34.0))]
    recs.append(record(config(n_samples=8), 40.0, experiment="calib_study"))
    recs.append({**record(config(method="rtn"), 50.0), "status": "diverged"})
    recs.append({**record(config(method="astro_gptq"), 1.0), "kind": "probe:fig1"})
    gs, left = digest.groups([("snap-a", r) for r in recs[:3]] + [("snap-b", r) for r in recs[3:]])
    df = digest.table(gs).set_index("experiment")
    assert left == {"probe records": 1} and len(gs) == 3
    three = df.loc["table1"]
    gptq = three[three["method"] == "GPTQ"].iloc[0]
    assert gptq["n"] == "3" and gptq["seeds"] == "0, 1, 2" and gptq["test PPL (mean ± std)"] == "32.00 ± 2.00"
    assert gptq["settings"] == "calib.n_samples=32" and gptq["snapshots"] == "snap-a"
    assert df.loc["calib_study", "settings"] == "calib.n_samples=8"
    rtn = three[three["method"] == "RTN"].iloc[0]
    assert rtn["n"] == "0" and rtn["test PPL (mean ± std)"] == "- (1 diverged)"


# --- an earlier protocol's Table 1, claims and Fig. 3, as it composed them ----------------------------------------


def v1_view(**kw):
    from analysis.earlier import View
    return View("p1", ("tiny-random-llama",), ("w3g64",), ("fp", "rtn", "gptq", "magr_gptq", "astro_gptq"),
                {"calib.n_samples": 32, "method.gptq.act_order": False}, {"tiny-random-llama": 1e-3}, **kw)


def fp_record(ppl: float) -> dict:
    rec = record(config("fp"), ppl)
    assert "quant" not in rec["canonical"]   # FP reads no grid: one record answers every setting
    return rec


def test_earlier_cell_is_the_matching_computation_with_the_most_seeds():
    """Records that differ from the protocol's account (another calibration size), another beta or another method
    are left out; MagR+GPTQ is read from Astro+GPTQ records with uniform alpha_k; per seed the record made without
    diagnostics answers before one with held-out windows; a data-free FP record answers the setting."""
    from analysis import earlier
    gptq = [record(config(seed=s), p) for s, p in ((0, 30.0), (1, 31.0), (2, 32.0))]
    holdout = record(dataclasses.replace(config(seed=0), calib=CalibConfig("wiki_offline", 32, 64, 0, holdout=8)), 99.0)
    other = [record(config(n_samples=8, seed=s), 40.0) for s in range(4)]   # more seeds, not the protocol's
    uniform_alpha = MethodConfig("astro_gptq", beta=1e-3, iters=5, alpha="uniform")
    uniform = [dataclasses.replace(config(seed=s), method=uniform_alpha) for s in range(3)]
    magr = [record(cfg, 29.0 + s) for s, cfg in enumerate(uniform)]           # Table 3's uniform-alpha records
    astro_other_beta = [record(config("astro_gptq", seed=s, beta=5e-5), 20.0) for s in range(3)]
    recs = [("s", r) for r in [*gptq, holdout, *other, *magr, *astro_other_beta, fp_record(15.0)]]
    view = v1_view()
    g = earlier.cell(recs, view, "tiny-random-llama", "w3g64", "gptq")
    assert sorted(r["metrics"]["ppl"] for r in g.records) == [30.0, 31.0, 32.0]
    m = earlier.cell(recs, view, "tiny-random-llama", "w3g64", "magr_gptq")
    assert g.fmt("metrics.ppl") == "31.00 ± 1.00 (n=3)" and m.fmt("metrics.ppl") == "30.00 ± 1.00 (n=3)"
    assert not earlier.cell(recs, view, "tiny-random-llama", "w3g64", "astro_gptq").records   # only beta 5e-5
    at = earlier.cell(recs, view, "tiny-random-llama", "w3g64", "astro_gptq", beta=5e-5)
    assert at.fmt("metrics.ppl") == "20.00 ± 0.00 (n=3)"
    assert earlier.cell(recs, view, "tiny-random-llama", "w3g64", "fp").fmt("metrics.ppl") == "15.00 (n=1)"
    t = earlier.build(recs, view)
    row = t.table1.set_index("method").loc
    assert row["GPTQ", "tiny-random-llama w3g64"] == "31.00 ± 1.00 (n=3)" and \
        row["RTN", "tiny-random-llama w3g64"] == "not run"
    claim = t.claims.set_index("claim").loc["MagR+GPTQ < GPTQ"]
    assert claim["A - B"] == "-1.00" and claim["verdict"] == "supported" and claim["n"] == "3"


def test_earlier_view_refuses_an_unknown_key_naming_it():
    from analysis import earlier
    man = {"protocols": {"p1": {"tables": {"models": ["m"], "settings": ["w3g64"], "methods": ["gptq"], "colour": 1}}}}
    with pytest.raises(ValueError, match=r"protocols.p1.tables: unknown key\(s\) \['colour'\]"):
        earlier.view_of("p1", man)
    man["protocols"]["p1"]["tables"] = {"models": ["m"], "settings": ["w3g64"], "methods": ["gtpq"]}
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['gtpq'\]"):
        earlier.view_of("p1", man)
    assert earlier.view_of("p2", {"protocols": {"p2": {"snapshots": []}}}) is None


def test_archive_view_of_embedded_v1_gives_every_cell_of_its_table1():
    """The manifest's account of embedded-v1 finds a record for every cell it ran (3 seeds where it calibrates),
    so the report's and README's embedded-v1 Table 1 has no hole."""
    from analysis import earlier
    view = earlier.view_of("embedded-v1")
    t = earlier.build(earlier.protocol_records("embedded-v1"), view)
    values = [v for col in t.table1.columns[1:] for v in t.table1[col]]
    assert "not run" not in values and all(v.endswith(("(n=3)", "(n=1)")) or v == "n/a" for v in values)
    assert all(v.endswith("(n=3)") for v in t.table1.set_index("method").loc["Astro+GPTQ"])
    assert {c.config.method.name for c in t.fig3} >= {"astro_gptq", "magr_gptq", "gptq", "astro_rtn", "magr_rtn"}


# --- a missing cell names the closest record ------------------------------------------------------------------


def test_missing_cell_names_the_closest_record_of_an_earlier_protocol(caplog):
    from analysis.common import _explain_missing
    from astro.results import canonical_config, stored_form
    want = stored_form(canonical_config(config(n_samples=32, beta=2e-3, method="astro_gptq")))
    near = record(config(n_samples=8, beta=2e-3, method="astro_gptq"), 30.0)           # differs in one field
    far = record(config(n_samples=8, beta=5e-5, method="astro_gptq"), 30.0)            # in two
    other = record(config(n_samples=32, beta=2e-3, method="magr_gptq"), 30.0)          # another method
    assert closest(want, [(1, far["canonical"]), (2, near["canonical"])]) == (["calib.n_samples"], 2)
    with caplog.at_level(logging.INFO, logger="analysis.common"):
        _explain_missing(want, {}, {"method": "astro_gptq", "calib.seed": "0"})
        assert caplog.text == ""   # nothing to compare with
        with explaining_from([("v1: snap", far), ("v1: snap", near), ("v1: snap", other)]):
            _explain_missing(want, {}, {"method": "astro_gptq", "calib.seed": "0"})
    line = caplog.text.strip().splitlines()[-1]
    assert f"(v1: snap, record {near['key']}) differs in calib.n_samples" in line and "calib.seed" not in line


def test_missing_probe_names_the_closest_probe_record(tmp_path):
    from astro.results import ResultStore, canonical_config, stored_form
    want = stored_form(canonical_config(config("astro_gptq", beta=2e-3)))
    probe = {**record(config("astro_gptq", beta=5e-5), 1.0), "kind": "probe:fig1"}
    probe["canonical"] = {"probe": "fig1", **probe["canonical"]}
    with explaining_from([("v1: snap", probe)]), pytest.raises(SystemExit) as e:
        common.find_probe(ResultStore(tmp_path), "fig1", want, "fig1-outliers")
    assert str(e.value) == (f"no fig1 probe record for this configuration: run `make fig1-outliers` first; the closest "
                            f"fig1 probe record (v1: snap, record {probe['key']}) differs in method.beta")


# --- the report's page -----------------------------------------------------------------------------------------


def test_page_lists_every_artifact_and_says_what_is_not_measured(tmp_path):
    """The page built from a fixture archive: an artifact whose script has nothing to draw says why, a protocol
    without records says its tables hold no number yet, the earlier protocol is a digest under its name."""
    from analysis import report
    from analysis.report_html import page
    a = report.Artifact("table9", "Table 9: a test", "table9", "p2",
                        tables=[report.Table("t9", "cap", pd.DataFrame({"method": ["GPTQ"], "w3": ["missing"]}))],
                        note="no probe record: run `make x` first", missing=["missing {'method': 'gptq'}: ..."])
    d = {"protocol": "p1", "description": "old", "groups": 1, "probes": 0, "set_aside": ["s0"],
         "table": pd.DataFrame({"model": ["m"], "test PPL (mean ± std)": ["30.00 ± 1.00"]})}
    fp = {"p2": {"snapshots": [], "records": 0, "hash": "a"}, "p1": {"snapshots": ["s1"], "records": 3, "hash": "b"}}
    man = {"protocols": {"p2": {"description": "new"}, "p1": {"description": "old"}}}
    html = page([a], [d], man, fp, "p2", {"archive": fp})
    assert 'id="table9"' in html and "Nothing to draw yet: no probe record" in html
    assert "Not measured yet under p2" in html and "no number yet (1 rows)" in html
    assert "Why 1 cell(s) are missing" in html and 'id="digest-p1"' in html and "30.00 ± 1.00" in html
    assert "Set aside" in html and 'id="render-check"' in html
    assert "its reruns are pending" in html and "Table 1 under p1" not in html   # p1 has no view here
    d["view"] = {"table1": pd.DataFrame({"method": ["GPTQ"], "m w3g64": ["31.75 ± 0.07 (n=3)"]}),
                 "claims": pd.DataFrame(), "fig3": None, "fig3_machines": "",
                 "settings": {"config": {"calib.n_samples": 32}, "beta": {"m": 2.5e-3}}}
    html = page([a], [d], man, fp, "p2", {"archive": fp})
    assert "Table 1 under p1" in html and "not the current protocol" in html and 'href="#p1-table1"' in html
    assert "31.75 ± 0.07 (n=3)" in html and "calib.n_samples=32" in html


# --- the quickstart beside Table 1 ---------------------------------------------------------------------------


def test_quickstart_reference_scores_table1_records_on_the_same_windows():
    """Table 1's cell beside the quickstart is scored on the first windows the quickstart scored (from each
    record's per-window NLLs), with the 95% t-interval of its mean over seeds."""
    from analysis.paired import t_half_width
    from experiments.quickstart import ref_text, reference
    nll = {0: [3.0, 3.2, 9.0, 9.0], 1: [3.1, 3.3, 9.0, 9.0], 2: [2.9, 3.1, 9.0, 9.0]}
    cell = Cell({}, config(), "", [record(config(seed=s), math.exp(sum(v) / 4), nll=v) for s, v in nll.items()])
    ref = reference(cell, config(n_samples=8), windows=2)
    ppl = [math.exp(sum(v[:2]) / 2) for v in nll.values()]
    m = sum(ppl) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in ppl) / 2)
    assert ref["n"] == 3 and math.isclose(ref["mean"], m) and math.isclose(ref["std"], sd)
    assert math.isclose(ref["half"], t_half_width(sd, 3))
    assert ref_text(ref, "p2").startswith(f"{m:.3f} ± {sd:.3f} (n=3), 95% CI of the mean [{m - ref['half']:.3f}")
    other_text = dataclasses.replace(config(), eval=EvalConfig("lee_news", 64, 4))
    assert reference(cell, other_text, 2)["n"] == 0          # another test text: no same-window reference
    assert ref_text(None, "p2") == "not measured yet under p2"


# --- the browser check of the committed page (slow) -----------------------------------------------------------


def chromium() -> str:
    """Debian's chromium; `make test-slow` and `make test-all` install it when missing (make chromium)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed: `make chromium` installs Debian's package (root)")
    return path


def headless(url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update", "--no-first-run",
                              f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args, url],
                             capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_committed_report_renders_every_figure_and_table_in_a_browser(tmp_path):
    """docs/report/index.html in headless Chromium: every image loads (naturalWidth > 0), every table has rows;
    the page's own check writes the counts into #render-check once loaded."""
    page = readme.SUMMARY.parent / "index.html"
    check = render_check(page.as_uri())
    figures = sorted(p.name for p in (page.parent / "figures").glob("*.png"))
    assert check["broken"] == [] and check["images"] == len(figures)
    assert check["tables"] > 0 and check["empty"] == 0
    shot = tmp_path / "page.png"
    headless(page.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.stat().st_size > 10_000


def render_check(url: str) -> dict:
    dom = headless(url, "--dump-dom")
    return json.loads(dom.split('id="render-check"', 1)[1].split(">", 1)[1].split("</pre>", 1)[0])


@pytest.mark.slow
def test_page_check_sees_loaded_and_broken_figures(tmp_path):
    """The page's check counts a figure that loads and names one that does not (a control for the tests above)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis import report
    from analysis.report_html import page
    (tmp_path / "figures").mkdir()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "figures" / "ok.png")
    a = report.Artifact("f", "F", "f", "p", figures=["ok.png", "gone.png"],
                        tables=[report.Table("t", "c", pd.DataFrame({"a": ["1"]}))])
    fp = {"p": {"snapshots": ["s"], "records": 1, "hash": "h"}}
    (tmp_path / "index.html").write_text(page([a], [], {"protocols": {"p": {}}}, fp, "p", {"archive": fp}))
    check = render_check((tmp_path / "index.html").as_uri())
    assert check["images"] == 2 and check["broken"] == ["figures/gone.png"] and check["tables"] >= 2


@pytest.mark.slow
def test_committed_summary_is_what_the_archive_gives_now(tmp_path):
    """The report regenerated from archive/ gives the committed summary (so the README block is current), and
    its figures load in a browser."""
    from analysis import report
    arts, summ = report.build(tmp_path, common.ARCHIVE)
    assert not [a.name for a in arts if a.failed]
    assert json.loads(json.dumps(summ, sort_keys=True)) == readme.load_summary()
    check = render_check((tmp_path / "index.html").as_uri())
    assert check["broken"] == [] and check["empty"] == 0
