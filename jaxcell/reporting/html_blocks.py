"""Building blocks of a self-contained HTML page: escaped text, numbers, tables, sections and embedded PNGs.

Every argument is plain text and is escaped here (html.escape), so a caller never writes raw study text into the
page. Figures and thumbnails become base64 PNG data URIs and `STYLE` is an inline style sheet, so the page needs
no other file and no JavaScript. report_html.py assembles the study report from these.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxcell.workdir import storage

THUMBNAIL_PX = 96
# Cells that read as numbers ('0.912', '85 %', 'n/a', '0.8 to 0.9', '12 of 40 (30 %)') are right-aligned.
_NUMERIC = re.compile(r"^([-+]?[0-9.]+( %)?|n/a|[0-9.]+ to [0-9.]+|[0-9]+ of [0-9]+ \([0-9]+ %\))$")
STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; } th { background: #f0f0f0; text-align: left; }
td.diag { background: #e3f2e3; font-weight: bold; text-align: right; }
.what { background: #f6f8fb; border-left: 4px solid #5b7db1; padding: 0.5em 0.9em; }
.note { color: #666; font-size: 0.9em; } img.figure { max-width: 100%; border: 1px solid #ddd; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.8em; } figure { margin: 0; width: 130px; font-size: 0.8em; }
figure img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #999; } .wrong { color: #b00; }
"""


def esc(value) -> str:
  return html.escape(str(value), quote=True)


def number(value, digits: int = 3) -> str:
  """A number for a table cell; None and nan (an undefined value) read 'n/a'."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  return f"{float(value):.{digits}f}"


def percent(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.0f} %"


def png_data_uri(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_uri(array: np.ndarray, size: int = THUMBNAIL_PX) -> str:
  """A uint8 image (HxW or HxWxC) as a size x size PNG data URI; small images are enlarged without blurring."""
  image = Image.fromarray(np.squeeze(array) if array.ndim == 3 and array.shape[-1] == 1 else array)
  image = image.resize((size, size), Image.NEAREST if image.width < size else Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return png_data_uri(buffer.getvalue())


def figure_html(path: storage.PathLike | None, alt: str) -> str:
  """An embedded PNG figure (from a local or bucket workdir), or a note saying it is missing."""
  if not path or not storage.as_path(path).is_file():
    return f'<p class="note">(figure not available: {esc(storage.as_path(path).name if path else alt)})</p>'
  return f'<img class="figure" alt="{esc(alt)}" src="{png_data_uri(storage.as_path(path).read_bytes())}">'


def table_html(header: Sequence[str], rows: Sequence[Sequence], cell_class=None) -> str:
  """A table of escaped text, numbers right-aligned; cell_class(i, j) may name a CSS class for body cell (i, j)."""
  head = "".join(f"<th>{esc(h)}</th>" for h in header)
  body = []
  for i, row in enumerate(rows):
    cells = []
    for j, value in enumerate(row):
      css = cell_class(i, j) if cell_class else None
      css = css or ("num" if _NUMERIC.match(str(value)) else None)
      cells.append(f'<td class="{esc(css)}">{esc(value)}</td>' if css else f"<td>{esc(value)}</td>")
    body.append("<tr>" + "".join(cells) + "</tr>")
  return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def paragraph(text: str, css: str | None = None) -> str:
  return f'<p class="{css}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


def bullets(items: Sequence[str]) -> str:
  """An unordered list of escaped text items."""
  return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def section_html(key: str, title: str, meaning: str, body: str) -> str:
  """A section (anchor `key`): heading, the body, then a plain-words 'What this means' box."""
  return (
    f'<section id="{esc(key)}"><h2>{esc(title)}</h2>{body}'
    f'<div class="what"><strong>What this means.</strong> {esc(meaning)}</div></section>'
  )


def page_html(title: str, subtitle: str, sections: dict[str, str], parts: Sequence[str]) -> str:
  """A whole page: title, a note line, a table of contents linking {anchor: heading}, then the parts."""
  contents = "".join(f'<li><a href="#{esc(key)}">{esc(heading)}</a></li>' for key, heading in sections.items())
  return (
    f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
    f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"
    f'<p class="note">{esc(subtitle)}</p><nav><ol>{contents}</ol></nav>' + "".join(parts) + "</body></html>\n"
  )
