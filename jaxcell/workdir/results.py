"""results.csv, the study's results table: one CSV row per trained model x evaluated split.

The first columns identify the model and the split (`ID_COLUMNS`); every other column is a metric,
in `classification_metrics` order (the per-class recall columns depend on the dataset). Runs are
resumable, so rows are appended lane by lane; appending to a table with different columns is an
error rather than a silently misaligned file.

`n_per_class` is an int (training images per class) or None, meaning "all images", stored as ''. `status` is
'ok', or 'diverged' for a model whose training diverged (its metrics are NaN; `usable` drops such rows).
"""

from __future__ import annotations

import csv
import io
import numbers
from collections.abc import Mapping, Sequence

from jaxcell.workdir import storage
from jaxcell.workdir.layout import CV_TEST_SPLIT, HOLDOUT_SPLIT

__all__ = [
  "CV_TEST_SPLIT", "DIVERGED", "HOLDOUT_SPLIT", "ID_COLUMNS", "OK", "append_rows", "metric_columns", "read_rows", "usable"
]  # fmt: skip

ID_COLUMNS: tuple[str, ...] = (
  "arm",
  "lane",
  "seed",
  "repeat",
  "fold",
  "n_per_class",
  "split",
  "num_images",
  "status",
)
INT_COLUMNS: tuple[str, ...] = ("lane", "seed", "repeat", "fold", "num_images")
STRING_COLUMNS: tuple[str, ...] = ("arm", "split", "status")
# A model's status: trained and scored, or diverged in training (metrics NaN, left out of every analysis).
OK, DIVERGED = "ok", "diverged"


def metric_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
  """The metric column names of `rows` (everything but the ID columns), in the first row's order."""
  if not rows:
    return []
  return [name for name in rows[0] if name not in ID_COLUMNS]


def _header_for(rows: Sequence[Mapping[str, object]]) -> list[str]:
  header = list(ID_COLUMNS) + metric_columns(rows)
  missing = [name for name in ID_COLUMNS if name not in rows[0]]
  if missing:
    raise ValueError(f"result rows are missing the identifying columns {missing}.")
  for index, row in enumerate(rows):
    if set(row) != set(header):
      extra = sorted(set(row) - set(header))
      absent = sorted(set(header) - set(row))
      raise ValueError(
        f"result row {index} has different columns from row 0 "
        f"(extra: {extra}, missing: {absent}); all rows must share one set of metrics."
      )
  return header


def _format_value(column: str, value: object) -> str:
  """Check one cell against its column's type and render it for the CSV."""
  if column in STRING_COLUMNS:
    if not isinstance(value, str) or not value:
      raise ValueError(f"column {column!r} must be a non-empty string, got {value!r}.")
    return value
  if column == "n_per_class" and value is None:
    return ""
  if column in INT_COLUMNS or column == "n_per_class":
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"column {column!r} must be an integer, got {value!r}.")
    return str(int(value))
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"metric column {column!r} must be a number (nan allowed), got {value!r}.")
  return repr(float(value))  # repr keeps full precision and writes nan as 'nan'


def append_rows(csv_path, rows: Sequence[Mapping[str, object]]) -> None:
  """Append result rows, writing the header first if the file does not exist yet.

  Rows already on disk are kept, so an interrupted run can resume; the columns of `rows` must
  match the header on disk (in any order; they are written in the file's order).
  """
  if not rows:
    return
  rows = [{"status": OK, **row} for row in rows]  # A row without a status is a trained model's.
  csv_path = storage.as_path(csv_path)
  header = _header_for(rows)
  text = storage.read_text(csv_path) if csv_path.exists() else ""
  exists = bool(text)
  if exists:
    disk_header = next(storage.csv_rows(text), [])
    if set(disk_header) != set(header):
      raise ValueError(
        f"results table {csv_path} has columns {disk_header}, but the new rows have "
        f"{header} (only on disk: {sorted(set(disk_header) - set(header))}, only in the "
        f"rows: {sorted(set(header) - set(disk_header))}). Write to a new file or workdir."
      )
    if not text.endswith("\n"):
      raise ValueError(
        f"results table {csv_path} does not end with a newline: its last row was probably "
        "cut off by an interrupted write. Remove the partial last line, then resume."
      )
    header = disk_header
  formatted = [[_format_value(column, row[column]) for column in header] for row in rows]

  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer, lineterminator="\n")
  if not exists:
    writer.writerow(header)
  writer.writerows(formatted)
  storage.append_text(csv_path, buffer.getvalue())


def _parse_value(column: str, text: str) -> object:
  if column in STRING_COLUMNS:
    return text
  if column == "n_per_class":
    return None if text == "" else int(text)
  if column in INT_COLUMNS:
    return int(text)
  return float(text)


def read_rows(csv_path) -> list[dict[str, object]]:
  """Read the results table back with typed values (ints, None for 'all', floats with nan)."""
  csv_path = storage.as_path(csv_path)
  if not csv_path.exists():
    raise FileNotFoundError(f"no results table at {csv_path}; has the study written any rows yet?")
  reader = storage.csv_dicts(storage.read_text(csv_path))
  header = reader.fieldnames or []
  legacy = "status" not in header  # Written before the status column existed: every row was a trained model.
  expected = [c for c in ID_COLUMNS if c != "status"] if legacy else list(ID_COLUMNS)
  if list(header[: len(expected)]) != expected:
    raise ValueError(
      f"{csv_path} is not a jaxcell results table: it must start with the columns "
      f"{list(ID_COLUMNS)}, found {header[: len(expected)]}."
    )
  rows = []
  for row in reader:
    if None in row or any(value is None for value in row.values()):
      raise ValueError(
        f"{csv_path}, line {reader.line_num}: expected {len(header)} cells; the row is truncated or has extra cells."
      )
    try:
      rows.append(
        {**({"status": OK} if legacy else {}), **{column: _parse_value(column, row[column]) for column in header}}
      )
    except ValueError as error:
      raise ValueError(f"{csv_path}, line {reader.line_num}: {error}") from None
  return rows


def usable(rows: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
  """The rows of models that trained (status 'ok'): what summaries, plots and comparisons are computed from."""
  return [row for row in rows if row.get("status", OK) == OK]
