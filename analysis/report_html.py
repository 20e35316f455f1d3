"""The report's HTML page (analysis/report.py builds what it shows): one self-contained file beside its figures/,
readable without a server. A small script at its end writes, once the page has loaded, how many figures and tables
rendered into a hidden element (#render-check), which tests/test_report.py reads from a headless browser."""

from __future__ import annotations

import html

import pandas as pd

EMPTY = ("missing", "not run", "n/a", "selection incomplete", "diverged", "-")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ccc; }
.prov, figcaption, .note { color: #444; font-size: 0.92em; }
.note { background: #fff8e0; padding: 0.4em 0.7em; border-left: 3px solid #e0b000; }
.failed { background: #fde8e8; padding: 0.4em 0.7em; border-left: 3px solid #c00; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 0.4em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.empty { color: #999; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
details { margin: 0.4em 0 1em; } summary { cursor: pointer; color: #335; }
li { font-size: 0.9em; }
"""

CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute('src'); });
  var tables = Array.prototype.slice.call(document.querySelectorAll('table'));
  var empty = tables.filter(function (t) { return t.rows.length < 2; }).length;
  var el = document.getElementById('render-check');
  el.textContent = JSON.stringify({images: imgs.length, broken: broken, tables: tables.length, empty: empty});
});
</script>
"""


def esc(v) -> str:
    return html.escape(str(v))


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    def td(v) -> str:
        return f'<td class="empty">{esc(v)}</td>' if str(v).startswith(EMPTY) else f"<td>{esc(v)}</td>"
    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def all_empty(df: pd.DataFrame) -> bool:
    """Whether no data cell of the table holds a number (the first column names the rows)."""
    cells = [str(v) for col in df.columns[1:] for v in df[col]]
    return bool(cells) and all(v.startswith(EMPTY) for v in cells)


def _list(summary: str, lines: list[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    return f"<details><summary>{esc(summary)}</summary><ul>{items}</ul></details>"


def artifact_html(a, fp: dict, manifest: dict) -> str:
    snaps = fp[a.protocol]["snapshots"]
    prov = (f"Protocol <b>{esc(a.protocol)}</b>: {len(snaps)} snapshot(s)"
            + (f" ({esc(', '.join(snaps))})" if snaps else "") + f", {fp[a.protocol]['records']} record(s). "
            f"Made by <code>analysis/{esc(a.script)}.py</code> from those snapshots alone.")
    out = [f'<section id="{esc(a.name)}"><h2>{esc(a.title)}</h2><p class="prov">{prov}</p>']
    if a.failed:
        out.append(f'<p class="failed">The script failed: {esc(a.failed)}</p>')
    if a.note:
        out.append(f'<p class="note">Nothing to draw yet: {esc(a.note)}</p>')
    if not fp[a.protocol]["records"]:
        out.append(f'<p class="note">Not measured yet under {esc(a.protocol)}: no snapshot of it is archived '
                   f'(archive/manifest.yaml). The tables below list the cells it will hold.</p>')
    for f in a.figures:
        out.append(f'<figure><img src="figures/{esc(f)}" alt="{esc(f)}" loading="eager">'
                   f'<figcaption>{esc(f)}</figcaption></figure>')
    for t in a.tables:
        if t.df.empty:
            out.append(f'<p class="prov"><b>{esc(t.name)}</b>: no row yet. {esc(t.caption)}</p>')
            continue
        body = table_html(t.df)
        if all_empty(t.df) or not fp[a.protocol]["records"]:
            body = f"<details><summary>no number yet ({len(t.df)} rows): show</summary>{body}</details>"
        out.append(f'<figure class="table"><figcaption><b>{esc(t.name)}</b>. {esc(t.caption)}</figcaption>'
                   f"{body}</figure>")
    out.append(_list(f"Why {len(a.missing)} cell(s) are missing: the closest record and the fields it differs in",
                     a.missing))
    out.append(_list(f"Log ({len(a.log)} line(s))", a.log))
    return "\n".join(out) + "</section>"


def _settings_text(settings: dict) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in settings["config"].items())
    betas = ", ".join(f"{m}: {b:g}" for m, b in settings["beta"].items())
    return f"the fields its cells' records share: {fields}; MagR's and Astro's beta per model: {betas}"


def view_html(d: dict, current: str) -> str:
    """An earlier protocol's Table 1, claims and Fig. 3 as it composed them (analysis/earlier.py)."""
    v, p = d["view"], d["protocol"]
    warn = (f'<p class="note">These are <b>{esc(p)}</b>\'s numbers, not the current protocol\'s '
            f"({esc(current)}). {esc(p)} chose its tuned settings on the same test windows it scored (its description "
            "above), so its tuned cells are optimistic; the current protocol's reruns replace them.</p>")
    fig = (f'<figure><img src="figures/{esc(v["fig3"])}" alt="Fig. 3 under {esc(p)}" loading="eager">'
           f"<figcaption>Fig. 3 under {esc(p)}: test PPL vs total quantization time (wall seconds, log scale) of the "
           f"cells of Table 1 below at this setting and of the RTN pipelines at their own beta; mean over seeds, "
           f"bars ± std; methods above 5x FP on the right. Machines: {esc(v['fig3_machines'])}.</figcaption>"
           "</figure>" if v["fig3"] else "")
    return (f'<h3 id="{esc(p)}-table1">Table 1 under {esc(p)}</h3>{warn}<p class="prov">Test PPL, mean ± std over '
            f"calibration seeds (n), as {esc(p)} composed the table ({esc(_settings_text(v['settings']))}); "
            "'not run': no record of it under this protocol; 'n/a': the method does not apply to the model.</p>"
            f"{table_html(v['table1'])}"
            f'<h3 id="{esc(p)}-claims">The paper\'s claims under {esc(p)}</h3><p class="prov">A - B: mean over the '
            "calibration seeds both cells share of the PPL difference (lower is better), with the 95% Student-t "
            "interval over those seeds (its records hold no per-window NLLs, so no window bootstrap); supported / "
            "refuted: the interval excludes 0; a claim needs 3 shared seeds; two cells above 5x FP are not ranked."
            f"</p>{table_html(v['claims']) if len(v['claims']) else '<p>No claim has both cells.</p>'}"
            f'<h3 id="{esc(p)}-fig3">Fig. 3 under {esc(p)}</h3>{fig}')


def digest_html(d: dict, fp: dict, current: str = "") -> str:
    p = d["protocol"]
    snaps = fp[p]["snapshots"]
    aside = (f" Set aside (never mixed with these records; archive/README.md says why): "
             f"{esc(', '.join(d['set_aside']))}." if d["set_aside"] else "")
    return (f'<section id="digest-{esc(p)}"><h2>{esc(p)}: an earlier protocol, from its records as they are</h2>'
            f'<p class="prov">{esc(d["description"])}</p>'
            + (view_html(d, current) if d.get("view") else "")
            + f'<h3 id="{esc(p)}-records">Every {esc(p)} record, grouped by configuration</h3>'
            f'<p class="prov">{len(snaps)} snapshots, '
            f"{fp[p]['records']} records, {d['groups']} configurations (grouped by each record's own canonical "
            f"config, the calibration seed aside; test PPL mean ± std over the seeds); {d['probes']} probe records "
            f"not shown.{aside} Today's grids do not compose these records; what they found is told in "
            f'<a href="../embedded-v1-evidence.md">docs/embedded-v1-evidence.md</a>.</p>'
            f"{table_html(d['table']) if len(d['table']) else '<p>No record.</p>'}</section>")


def page(arts, digests, manifest: dict, fp: dict, current: str, summary: dict) -> str:
    rows = "".join(f"<tr><td>{esc(name)}</td><td>{esc(spec.get('description', ''))}</td>"
                   f"<td>{len(fp[name]['snapshots'])}</td><td>{fp[name]['records']}</td>"
                   f"<td>{'current' if name == current else 'earlier: below, under its name'}</td></tr>"
                   for name, spec in manifest["protocols"].items())
    toc = "".join(f'<li><a href="#{esc(a.name)}">{esc(a.title)}</a></li>' for a in arts)
    toc += "".join(f'<li><a href="#digest-{esc(d["protocol"])}">{esc(d["protocol"])} (an earlier protocol): '
                   f'{"Table 1, claims, Fig. 3 and " if d.get("view") else ""}every record</a></li>' for d in digests)
    pending = ""
    if not fp[current]["records"]:
        shown = [d["protocol"] for d in digests if d.get("view")]
        pending = (f'<p class="note"><b>The current protocol, {esc(current)}, has no archived record yet: its reruns '
                   "are pending</b> (<code>make study</code>), so its sections below list the cells they will fill, "
                   "with no number."
                   + "".join(f' The earlier protocol\'s Table 1, claims and Fig. 3 are shown under its own name: '
                             f'<a href="#{esc(p)}-table1">{esc(p)}</a>; they are not {esc(current)}\'s numbers.'
                             for p in shown) + "</p>")
    fingerprints = ", ".join(f"{k} {v['hash']}" for k, v in summary["archive"].items())
    protocols = ("<div class=\"scroll\"><table><thead><tr><th>protocol</th><th>what it is</th><th>snapshots</th>"
                 f"<th>records</th><th>shown</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Astro reproduction: report"
            f"</title><style>{STYLE}</style></head><body>"
            "<h1>Astro reproduction: every table and figure, from archive/</h1>"
            f"<p>Generated by <code>make report</code> (<code>analysis/report.py</code>) from the run records in "
            f"<code>archive/</code>, as <code>archive/manifest.yaml</code> assigns them: each artifact reads the "
            f"snapshots of its protocol alone, nothing else. Current protocol: <b>{esc(current)}</b> "
            f"(docs/protocol.md). Archive fingerprint: {esc(fingerprints)}.</p>"
            f"{pending}{protocols}<ul>{toc}</ul>"
            + "\n".join(artifact_html(a, fp, manifest) for a in arts)
            + "\n".join(digest_html(d, fp, current) for d in digests)
            + f'<pre id="render-check" hidden></pre>{CHECK}</body></html>\n')
