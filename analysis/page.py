"""The HTML shell both report pages share: CSS, plotly.js inline once, sortable tables, figures.

A report must open from a copied folder on a machine without a network, so nothing is linked:
plotly.js is written into the page's head once (only when the page has a chart) and every figure
after it is a bare ``<div>`` (``plotly.io.to_html(..., include_plotlyjs=False, full_html=False)``).
The table sorting and filtering is a few lines of vanilla JavaScript, inline too.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from sdexp.atomic import atomic_write_bytes

DASH = "—"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:.4em 0 1.2em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.best{background:#fff6d5}tr.fail td{color:#a00}
table.sortable th{cursor:pointer;user-select:none}table.sortable td:first-child{white-space:nowrap}table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}input.filter{margin:.3em 0;padding:3px;width:22em}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plot{width:590px;height:400px;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.side{display:flex;flex-wrap:wrap;gap:3em}.side>div{max-width:640px}figure{margin:0;font-size:11px;max-width:180px}
figure img{display:block;max-width:160px;max-height:160px;image-rendering:pixelated;border:1px solid #999}
img.grid{max-width:100%;image-rendering:pixelated;border:1px solid #999}.note{color:#666}
pre{background:#f7f7f7;padding:6px;font-size:12px;white-space:pre-wrap}
code{background:#f4f4f4;padding:2px 4px}"""

# Click a header: sort by that column (numbers as numbers, from data-v when given), again: reverse.
# Type in the box above a table: show only the rows whose text holds every word typed.
TABLE_JS = """(function(){
function key(td){var v=td.getAttribute('data-v');var s=v!==null?v:td.textContent.trim();
var n=s===''?NaN:Number(s);return isNaN(n)?[1,s.toLowerCase()]:[0,n];}
function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
document.querySelectorAll('table.sortable').forEach(function(table){
var heads=table.tHead.rows[0].cells;
Array.prototype.forEach.call(heads,function(th,col){th.addEventListener('click',function(){
var asc=th.getAttribute('aria-sort')!=='ascending';
Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(r,s){var c=cmp(key(r.cells[col]),key(s.cells[col]));return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});
var box=document.querySelector('input.filter[data-table="'+table.id+'"]');
if(box)box.addEventListener('input',function(){var words=box.value.toLowerCase().split(/\\s+/).filter(Boolean);
Array.prototype.forEach.call(table.tBodies[0].rows,function(r){var text=r.textContent.toLowerCase();
r.style.display=words.every(function(w){return text.indexOf(w)>=0;})?'':'none';});});});
})();"""


def fmt(value) -> str:
    """A cell's text: floats to 4 significant digits, None as a dash."""
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cell(value, cls: str = "", title: str | None = None) -> str:
    """One ``<td>``, its text escaped; numbers carry their full value in data-v for sorting."""
    attrs = f' class="{cls}"' if cls else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        attrs += f' data-v="{value!r}"'
    if title:
        attrs += f' title="{escape(title, quote=True)}"'
    return f"<td{attrs}>{escape(fmt(value))}</td>"


def sortable_table(table_id: str, heads: list[str], rows: list[tuple[str, str]], placeholder: str) -> str:
    """A table whose headers sort on a click and a filter box above it; rows are (tr class, cells html)."""
    head = "".join(f'<th class="l">{escape(h)}</th>' for h in heads)
    body = "".join(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>" for cls, cells in rows)
    return (
        f'<input class="filter" type="search" data-table="{table_id}" placeholder="{escape(placeholder)}">'
        f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def key_value_table(rows: list[tuple[str, str]]) -> str:
    """A two-column table of (name, value) pairs, both escaped."""
    body = "".join(f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


def figure(src: str, caption: str) -> str:
    """An image (path relative to the page) with its caption, both escaped."""
    return (
        f'<figure><img src="{escape(src, quote=True)}" alt="{escape(caption, quote=True)}" loading="eager">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


class Page:
    """Sections of HTML plus plotly figures; ``render`` puts plotly.js in the head once if needed."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[str] = []
        self.has_plots = False

    def add(self, html: str) -> None:
        if html:
            self.sections.append(html)

    def plot(self, fig, div_id: str) -> str:
        """The figure as a div (no library, no full page): the page's head carries plotly.js."""
        import plotly.io as pio

        self.has_plots = True
        fig.update_layout(margin={"l": 60, "r": 20, "t": 50, "b": 50})
        html = pio.to_html(
            fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=PLOT_CONFIG,
            default_width="100%", default_height="100%",
        )  # fmt: skip
        return f'<div class="plot">{html}</div>'

    def render(self) -> str:
        library = ""
        if self.has_plots:
            from plotly.offline import get_plotlyjs

            library = f'<script type="text/javascript">{get_plotlyjs()}</script>'
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(self.title)}</title>'
            f"<style>{CSS}</style>{library}</head><body>{''.join(self.sections)}"
            f"<script>{TABLE_JS}</script></body></html>\n"
        )

    def write(self, out_dir: Path) -> Path:
        return atomic_write_bytes(Path(out_dir) / "index.html", self.render().encode("utf-8"))
