"""HTML building blocks: one self-contained page (inline CSS, images as base64 data URIs, no script,
no external fonts or links), tables and figures. Used by the run report and the comparison."""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path

from fedaudit import __version__
from fedaudit.report.fmt import esc

CSS = """
:root { --ink: #1c2833; --muted: #5d6d7e; --line: #d5dbdb; --band: #f4f6f7; --accent: #1f4e79; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 60px; }
header h1 { font-size: 26px; margin: 0 0 4px; color: var(--accent); }
header .sub { color: var(--muted); margin: 0 0 12px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line);
     color: var(--accent); }
h3 { font-size: 16px; margin: 20px 0 8px; }
p { margin: 8px 0; }
code { background: var(--band); padding: 1px 4px; border-radius: 3px; font-size: 13px; }
nav.toc { background: var(--band); border-radius: 6px; padding: 8px 14px; font-size: 13px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.summary { border-left: 6px solid #7f8c8d; background: #fbfcfc; padding: 10px 18px; border-radius: 4px; }
.summary p { margin: 10px 0; }
.summary h2 { margin-top: 6px; }
table#headline td:first-child { min-width: 9em; }
.level-high { border-left-color: #c0392b; background: #fdf2f1; }
.level-moderate { border-left-color: #e67e22; background: #fef6ec; }
.level-low { border-left-color: #d4ac0d; background: #fefbea; }
.level-negligible { border-left-color: #27ae60; background: #eefaf2; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; background: #7f8c8d; max-width: 11em; text-align: center; line-height: 1.35; }
.badge.high { background: #c0392b; } .badge.moderate { background: #e67e22; }
.badge.low { background: #b7950b; } .badge.negligible { background: #27ae60; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 32%; background: none; font-weight: 600; color: var(--muted); }
.ci { color: var(--muted); font-size: 12px; white-space: nowrap; }
.na { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 13px; }
.missing { background: var(--band); border: 1px dashed #aab7b8; padding: 10px 14px; border-radius: 4px;
           color: var(--muted); }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
@media (max-width: 800px) { .grid2 { grid-template-columns: 1fr; } }
.scroll { max-height: 460px; overflow: auto; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav.toc { display: none; } h2 { break-after: avoid; } figure, table { break-inside: avoid; } }
"""


def data_uri(png: Path | bytes) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path | None, alt: str, caption: str = "") -> str:
    """An <img> with the PNG embedded, or a note saying there was nothing to draw."""
    if path is None or not Path(path).is_file():
        return ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(path)}" alt="{esc(alt)}">{cap}</figure>'


def missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def table(header: list[str], rows: list[list[str]], *, numeric: set[int] | None = None, id_: str | None = None,
          cls: str = "") -> str:
    """Cells are HTML already (escape values with fmt.esc); ``numeric`` column indices align right."""
    numeric = numeric or set()
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{h}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    attrs = (f' id="{esc(id_)}"' if id_ else "") + (f' class="{esc(cls)}"' if cls else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def section(id_: str, title: str, body: str) -> str:
    return f'<section id="{esc(id_)}"><h2>{esc(title)}</h2>{body}</section>'


def toc(entries: list[tuple[str, str]]) -> str:
    links = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in entries)
    return f'<nav class="toc">{links}</nav>'


def page(title: str, subtitle: str, body: str) -> str:
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta name=\"generator\" content=\"fedaudit {esc(__version__)}\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{subtitle}</p></header>"
        f"{body}"
        f"<footer>Generated by fedaudit {esc(__version__)} on {esc(generated)}. This file is self-contained: "
        "it needs no network and can be archived with the DPIA.</footer>"
        "</main></body></html>\n"
    )


__all__ = ["CSS", "data_uri", "figure", "missing", "table", "kv_table", "section", "toc", "page"]
