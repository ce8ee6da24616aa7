"""Per-image predictions: predictions_{test,holdout}.csv (every model's probabilities on its CV test fold or the
global holdout) and predictions_new.csv (an ensemble on new images, from jaxcell.predict) — their one writer
and their one reader.

`load_prediction_table` reads a predictions file back into one `ArmPredictions` per arm, aligned by image path
(`read_stacks`: every training-set size at once); `read_oof_predictions` averages the out-of-fold rows per image.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxcell.workdir import storage
from jaxcell.workdir.layout import ANY_SIZE, size_key

PROB_PREFIX = "p_"
LANE_COLUMNS = ("arm", "lane", "seed", "repeat", "fold", "n_per_class")
REQUIRED_COLUMNS = (*LANE_COLUMNS, "path", "target", "prediction")
_ROW_SUM_TOLERANCE = 1e-3  # CSV probabilities carry 6 decimals, so rows sum to 1 only approximately.
_PRED_TOLERANCE = 2e-6  # The written prediction must be a maximum of the rounded probabilities.


# --- writing ------------------------------------------------------------------------------------


def prediction_rows(lane_fields: dict, paths, targets: np.ndarray, probs: np.ndarray, class_names) -> list[dict]:
  """One row per image: the lane, path, target, prediction, confidence and every class probability."""
  preds = probs.argmax(axis=1)
  rows = []
  for path, target, pred, p in zip(paths, targets, preds, probs):
    row = dict(lane_fields)
    row.update(path=path, target=class_names[target], prediction=class_names[pred], confidence=f"{p[pred]:.6f}")
    row.update(probability_columns(class_names, p))
    rows.append(row)
  return rows


def probability_columns(class_names, probs) -> dict[str, str]:
  """The p_<class> cells of one image's row (6 decimals), as every predictions file writes them."""
  return {f"{PROB_PREFIX}{name}": f"{v:.6f}" for name, v in zip(class_names, probs)}


def append_predictions(csv_path, rows: list[dict]) -> None:
  """Appends rows (dicts of one shape) to a CSV, writing the header first if the file is new."""
  if not rows:
    return
  new = not storage.as_path(csv_path).exists()
  storage.append_text(csv_path, storage.dict_csv_text(rows, rows[0], header=new))


def keep_lanes(csv_path, lanes: set[int]) -> None:
  """Drops rows of lanes that did not finish (a run interrupted between writing and recording a lane)."""
  if not storage.as_path(csv_path).exists():
    return
  text = storage.read_text(csv_path)
  fields = next(iter(storage.csv_rows(text)), [])
  rows = [r for r in storage.csv_dicts(text) if int(r["lane"]) in lanes]
  storage.write_text(csv_path, storage.dict_csv_text(rows, fields))


def write_new_predictions(csv_path, rows: list[dict]) -> None:
  """predictions_new.csv: one row per new image (path, prediction, confidence, bucket, vote share, p_<class>)."""
  storage.write_text(csv_path, storage.dict_csv_text(rows, rows[0]))


# --- reading ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ArmPredictions:
  """The per-image predictions of one arm's models, aligned by image path (models sorted by lane).

  `probs[m, i]` is model m's probability vector for image `paths[i]`, NaN where that model did not predict
  the image (`present[m, i]` False: CV-test tables). `targets` are class indices into `class_names`.
  """

  arm: str
  n_per_class: int | None
  class_names: tuple[str, ...]
  lanes: np.ndarray  # [M]
  seeds: np.ndarray  # [M]
  repeats: np.ndarray  # [M]
  folds: np.ndarray  # [M]
  paths: tuple[str, ...]  # [N]
  targets: np.ndarray  # [N]
  probs: np.ndarray  # [M, N, C]
  present: np.ndarray  # [M, N] bool

  @property
  def complete(self) -> bool:
    """True when every model predicted every image (holdout tables)."""
    return bool(self.present.all())


@dataclasses.dataclass(frozen=True, eq=False)
class PredictionTable:
  """A predictions CSV, one `ArmPredictions` per arm (in order of first appearance)."""

  csv_path: str
  class_names: tuple[str, ...]
  arms: dict[str, ArmPredictions]

  def __getitem__(self, arm: str) -> ArmPredictions:
    if arm not in self.arms:
      raise KeyError(f"no arm {arm!r} in {self.csv_path}; it has {list(self.arms)}.")
    return self.arms[arm]


def parse_size(text: str) -> int | None:
  """The n_per_class of a predictions CSV cell: an int, or None (trained on all images) for '' or 'None'."""
  return None if text in ("", "None") else int(text)


def _read_rows(csv_path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  """The header and (line number, row) pairs of a predictions CSV, checked for shape."""
  text = storage.read_text(csv_path)
  fields = list(next(iter(storage.csv_rows(text)), []))
  rows = list(enumerate(storage.csv_dicts(text), start=2))
  missing = [c for c in REQUIRED_COLUMNS if c not in fields]
  if missing:
    raise ValueError(
      f"{csv_path} lacks columns {missing}; expected a predictions_{{test,holdout}}.csv written by "
      f"jaxcell.workdir.predictions (columns {list(REQUIRED_COLUMNS)}, then p_<class> per class)."
    )
  if len(set(fields)) != len(fields):
    raise ValueError(f"{csv_path} has duplicate column names: {fields}.")
  for line, row in rows:
    if None in row or any(value is None for value in row.values()):
      raise ValueError(
        f"{csv_path} line {line} has {'more' if None in row else 'fewer'} fields than the header: rows with a "
        "different class list were appended to one file. Re-run the study into a fresh workdir."
      )
    try:
      for column in ("lane", "seed", "repeat", "fold"):
        int(row[column])
      parse_size(row["n_per_class"])
    except ValueError:
      raise ValueError(
        f"{csv_path} line {line}: lane, seed, repeat, fold must be integers and n_per_class an integer or empty."
      ) from None
  if not rows:
    raise ValueError(f"{csv_path} has a header but no prediction rows.")
  return fields, rows


def read_prediction_rows(csv_path: str) -> list[dict]:
  """Every row of a predictions CSV as a dict (lane, seed, repeat, fold as int, n_per_class int or None,
  p_<class> as float; the rest as text), checked like every reader of the file."""
  fields, rows = _read_rows(str(csv_path))
  out = []
  for _, row in rows:
    typed = dict(row)
    for column in ("lane", "seed", "repeat", "fold"):
      typed[column] = int(row[column])
    typed["n_per_class"] = parse_size(row["n_per_class"])
    for column in fields:
      if column.startswith(PROB_PREFIX):
        typed[column] = float(row[column])
    out.append(typed)
  return out


def load_prediction_table(csv_path: str, *, n_per_class: int | str | None = ANY_SIZE) -> PredictionTable:
  """Reads a predictions CSV into per-arm probability stacks aligned by image path.

  `n_per_class` selects one training-set size: an int, None for lanes trained on every image, or `ANY_SIZE`
  (default) to keep all rows, which must then hold a single size per arm (an arm of a learning-curve study
  mixes sizes, and averaging models trained on different sizes is rarely what is meant).
  """
  fields, rows = _read_rows(csv_path)
  return _table(csv_path, fields, rows, n_per_class)


def _table(csv_path, fields, rows, n_per_class) -> PredictionTable:
  class_names = tuple(f[len(PROB_PREFIX) :] for f in fields if f.startswith(PROB_PREFIX))
  if len(class_names) < 2:
    raise ValueError(f"{csv_path} needs one p_<class> column per class (at least two), found {list(class_names)}.")
  class_index = {name: i for i, name in enumerate(class_names)}
  prob_columns = [PROB_PREFIX + name for name in class_names]

  if n_per_class != ANY_SIZE:
    rows = [(line, row) for line, row in rows if parse_size(row["n_per_class"]) == n_per_class]
    if not rows:
      raise ValueError(f"{csv_path} has no rows with n_per_class={n_per_class!r}.")
  by_arm: dict[str, list[tuple[int, dict[str, str]]]] = {}
  for line, row in rows:
    for column in ("target", "prediction"):
      if row[column] not in class_index:
        raise ValueError(
          f"{csv_path} line {line}: {column} {row[column]!r} is not one of the p_<class> columns {list(class_names)}."
        )
    by_arm.setdefault(row["arm"], []).append((line, row))

  arms = {
    arm: _arm_predictions(csv_path, arm, arm_rows, class_names, class_index, prob_columns)
    for arm, arm_rows in by_arm.items()
  }
  return PredictionTable(csv_path=str(csv_path), class_names=class_names, arms=arms)


def read_stacks(csv_path) -> dict[str, dict[int | None, ArmPredictions]]:
  """{arm: {n_per_class: ArmPredictions}} of a predictions CSV (read once), arms in order of first appearance."""
  fields, rows = _read_rows(str(csv_path))
  pairs = list(dict.fromkeys((row["arm"], parse_size(row["n_per_class"])) for _, row in rows))
  stacks: dict[str, dict] = {arm: {} for arm, _ in pairs}
  for size in sorted({size for _, size in pairs}, key=size_key):
    table = _table(str(csv_path), fields, rows, size)
    for arm, preds in table.arms.items():
      stacks[arm][size] = preds
  return stacks


def _arm_predictions(csv_path, arm, arm_rows, class_names, class_index, prob_columns) -> ArmPredictions:
  sizes = {parse_size(row["n_per_class"]) for _, row in arm_rows}
  if len(sizes) > 1:
    shown = sorted("all" if s is None else str(s) for s in sizes)
    raise ValueError(
      f"{csv_path}: arm {arm!r} holds models trained on several n_per_class values {shown}; pass "
      "load_prediction_table(..., n_per_class=<one of them, None for all>) to analyse one size at a time."
    )
  paths = sorted({row["path"] for _, row in arm_rows})
  path_index = {p: i for i, p in enumerate(paths)}
  lane_meta: dict[int, tuple[int, int, int]] = {}
  for line, row in arm_rows:
    meta = (int(row["seed"]), int(row["repeat"]), int(row["fold"]))
    first = lane_meta.setdefault(int(row["lane"]), meta)
    if first != meta:
      raise ValueError(f"{csv_path} line {line}: lane {row['lane']} has seed/repeat/fold {meta}, elsewhere {first}.")
  lanes = sorted(lane_meta)
  lane_index = {lane: m for m, lane in enumerate(lanes)}

  probs = np.full((len(lanes), len(paths), len(class_names)), np.nan)
  targets = np.full(len(paths), -1, dtype=np.int64)
  for line, row in arm_rows:
    m, i = lane_index[int(row["lane"])], path_index[row["path"]]
    if not np.isnan(probs[m, i, 0]):
      raise ValueError(f"{csv_path} line {line}: lane {lanes[m]} predicts {row['path']!r} twice.")
    try:
      p = np.array([float(row[c]) for c in prob_columns])
    except ValueError as error:
      raise ValueError(f"{csv_path} line {line}: a p_<class> value is not a number ({error}).") from None
    if not np.all(np.isfinite(p)) or p.min() < 0 or abs(p.sum() - 1.0) > _ROW_SUM_TOLERANCE:
      raise ValueError(f"{csv_path} line {line}: class probabilities {p.tolist()} are not a distribution.")
    if p[class_index[row["prediction"]]] < p.max() - _PRED_TOLERANCE:
      raise ValueError(
        f"{csv_path} line {line}: prediction {row['prediction']!r} is not the most probable class; the p_<class> "
        "columns do not match the classes the rows were written with."
      )
    target = class_index[row["target"]]
    if targets[i] not in (-1, target):
      raise ValueError(f"{csv_path} line {line}: {row['path']!r} has target {row['target']!r} and another elsewhere.")
    probs[m, i], targets[i] = p, target

  meta = np.array([lane_meta[lane] for lane in lanes], dtype=np.int64)
  return ArmPredictions(
    arm=arm,
    n_per_class=sizes.pop(),
    class_names=class_names,
    lanes=np.array(lanes, dtype=np.int64),
    seeds=meta[:, 0],
    repeats=meta[:, 1],
    folds=meta[:, 2],
    paths=tuple(paths),
    targets=targets,
    probs=probs,
    present=~np.isnan(probs[..., 0]),
  )


class OOFPredictions(NamedTuple):
  paths: list[str]
  labels: np.ndarray  # (n,) class indices into class_names
  probs: np.ndarray  # (n, k) mean out-of-fold probabilities
  num_models: np.ndarray  # (n,) how many models' predictions were averaged per image
  class_names: list[str]


def read_oof_predictions(csv_path, *, arm: str | None = None, n_per_class=ANY_SIZE) -> OOFPredictions:
  """Mean out-of-fold probabilities per image from `predictions_test.csv` (CV test-fold predictions).

  Predictions of different arms or training-set sizes come from different kinds of models and are never
  averaged together: when the file holds several, pass `arm` and/or `n_per_class` (None = all images).
  """
  csv_path = storage.as_path(csv_path)
  fields, numbered = _read_rows(csv_path)
  records = [row for _, row in numbered]
  class_names = [name[len(PROB_PREFIX) :] for name in fields if name.startswith(PROB_PREFIX)]
  if not class_names:
    raise ValueError(f"{csv_path} has no prediction rows with path, target and p_<class> columns.")
  wanted_n = "" if n_per_class is None else (None if n_per_class == ANY_SIZE else str(int(n_per_class)))
  for column, wanted in (("arm", arm), ("n_per_class", wanted_n)):
    present = sorted({r[column] for r in records})
    if wanted is None and len(present) > 1:
      raise ValueError(f"{csv_path} holds several {column} values {present}; pass {column}= to choose one.")
    if wanted is not None:
      records = [r for r in records if r[column] == wanted]
      if not records:
        raise ValueError(f"{csv_path} has no rows with {column}={wanted!r}; present: {present}.")
  order, sums, counts, targets = [], {}, {}, {}
  for r in records:
    path = r["path"]
    if path not in sums:
      order.append(path)
      sums[path], counts[path], targets[path] = np.zeros(len(class_names)), 0, r["target"]
    elif targets[path] != r["target"]:
      raise ValueError(f"{csv_path}: image {path} has targets {targets[path]!r} and {r['target']!r} in different rows.")
    sums[path] += np.array([float(r[f"{PROB_PREFIX}{name}"]) for name in class_names])
    counts[path] += 1
  unknown = sorted({targets[p] for p in order} - set(class_names))
  if unknown:
    raise ValueError(f"{csv_path}: targets {unknown} have no p_<class> column.")
  index = {name: i for i, name in enumerate(class_names)}
  return OOFPredictions(
    paths=order,
    labels=np.array([index[targets[p]] for p in order], np.int64),
    probs=np.stack([sums[p] / counts[p] for p in order]),
    num_models=np.array([counts[p] for p in order], np.int64),
    class_names=class_names,
  )
