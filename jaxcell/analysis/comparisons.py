"""Paired comparisons between study arms: does arm B score better than arm A, and how sure are we?

Rows come from the results table (`jaxcell.workdir.results.read_rows`): one row per trained model
x split. Two arms are compared model by model: a pair is the two lanes with the same identity
(seed, repeat, fold, n_per_class), which trained on the same images and were scored on the same test
images, so the per-pair difference B - A removes the split-to-split variation that dominates tiny datasets.
Pairs never mix identities; lanes without a partner, and pairs with a nan score, are reported, not
silently dropped.

For the differences we report the mean, a percentile-bootstrap 95 % interval of the mean (resampling
pairs), the two-sided Wilcoxon signed-rank p-value (scipy), a two-sided sign-flip permutation p-value
(exact for up to 16 pairs, Monte Carlo beyond) and the fraction of pairs B wins, plus a sentence: B 'helps'
or 'hurts' when the interval excludes 0, else 'no clear difference'. The models of one study are not
independent (CV folds share training images), so these intervals and p-values are somewhat optimistic,
and p-values are not adjusted for the number of comparisons.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from jaxcell.workdir.layout import ANY_SIZE  # n_per_class filter: pool every training-set size

PAIR_KEY = ("seed", "repeat", "fold", "n_per_class")
LOWER_IS_BETTER = frozenset({"nll"})
_EXACT_PERMUTATION_MAX_PAIRS = 16
_SPLIT_PHRASES = {"test": "the CV test folds", "holdout": "the holdout"}


def _check_rows(rows: Sequence[Mapping[str, object]], metric: str, arms: Sequence[str]) -> None:
  if not rows:
    raise ValueError("no result rows to compare; read them with workdir.results.read_rows(results.csv).")
  missing = [c for c in ("arm", "split", *PAIR_KEY) if c not in rows[0]]
  if missing:
    raise ValueError(f"result rows lack the columns {missing}; pass rows from workdir.results.read_rows.")
  if metric not in rows[0]:
    metrics = [c for c in rows[0] if c not in ("arm", "lane", "split", "num_images", *PAIR_KEY)]
    raise ValueError(f"unknown metric {metric!r}; the rows have {metrics}.")
  present = list(dict.fromkeys(str(r["arm"]) for r in rows))
  for arm in arms:
    if arm not in present:
      raise ValueError(f"arm {arm!r} is not in the results; arms present: {present}.")


def _by_identity(rows, arm: str, split: str, metric: str, n_per_class) -> dict[tuple, float]:
  out = {}
  for r in rows:
    if r["arm"] != arm or r["split"] != split or (n_per_class != ANY_SIZE and r["n_per_class"] != n_per_class):
      continue
    key = tuple(r[c] for c in PAIR_KEY)
    if key in out:
      raise ValueError(
        f"arm {arm!r}, split {split!r} has two rows for (seed, repeat, fold, n_per_class) = {key}; "
        "the results table holds a model twice (e.g. a re-run appended). Remove the duplicate rows."
      )
    out[key] = float(r[metric])
  return out


def paired_differences(
  rows: Sequence[Mapping[str, object]], arm_a: str, arm_b: str, metric: str, split: str, *, n_per_class=ANY_SIZE
) -> dict[str, object]:
  """Matches the lanes of two arms by (seed, repeat, fold, n_per_class) on one split.

  Returns keys: pairs (list of {seed, repeat, fold, n_per_class, a, b, diff}, diff = b - a, sorted by
  identity), diffs (float array of the finite diffs), unmatched_a / unmatched_b (identities present in only
  one arm), nan_pairs (identities where either score is nan; left out of `diffs`).
  """
  if arm_a == arm_b:
    raise ValueError(f"compare two different arms; got {arm_a!r} twice.")
  _check_rows(rows, metric, (arm_a, arm_b))
  scores_a = _by_identity(rows, arm_a, split, metric, n_per_class)
  scores_b = _by_identity(rows, arm_b, split, metric, n_per_class)
  sort_key = lambda key: tuple((v is None, v or 0) for v in key)  # noqa: E731 - None (= all images) last
  pairs, nan_pairs = [], []
  for key in sorted(scores_a.keys() & scores_b.keys(), key=sort_key):
    a, b = scores_a[key], scores_b[key]
    pairs.append(dict(zip(PAIR_KEY, key), a=a, b=b, diff=b - a))
    if math.isnan(a) or math.isnan(b):
      nan_pairs.append(dict(zip(PAIR_KEY, key)))
  return {
    "pairs": pairs,
    "diffs": np.array([p["diff"] for p in pairs if not math.isnan(p["diff"])], np.float64),
    "unmatched_a": [dict(zip(PAIR_KEY, k)) for k in sorted(scores_a.keys() - scores_b.keys(), key=sort_key)],
    "unmatched_b": [dict(zip(PAIR_KEY, k)) for k in sorted(scores_b.keys() - scores_a.keys(), key=sort_key)],
    "nan_pairs": nan_pairs,
  }


def bootstrap_mean_ci(diffs, *, num_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95):
  """Percentile bootstrap interval of the mean of paired differences (pairs are resampled as units)."""
  diffs = np.asarray(diffs, np.float64)
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be at least 1, got {num_resamples}.")
  if diffs.size == 0:
    return float("nan"), float("nan")
  rng = np.random.default_rng(seed)
  means = diffs[rng.integers(0, diffs.size, size=(num_resamples, diffs.size))].mean(axis=1)
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(means, [tail, 1.0 - tail])
  return float(low), float(high)


def wilcoxon_p(diffs) -> float:
  """Two-sided Wilcoxon signed-rank p-value (scipy defaults); 1.0 when every difference is 0, nan for none."""
  diffs = np.asarray(diffs, np.float64)
  if diffs.size == 0:
    return float("nan")
  if np.all(diffs == 0):  # scipy cannot rank an all-zero sample; no evidence of any difference
    return 1.0
  return float(stats.wilcoxon(diffs, alternative="two-sided").pvalue)


def sign_flip_p(diffs, *, num_resamples: int = 10_000, seed: int = 0) -> float:
  """Two-sided sign-flip permutation p-value of the mean difference.

  Under 'no difference' each pair's sign is arbitrary; p = share of sign assignments whose |mean| is at
  least the observed one. Exact (all 2^n assignments) for n <= 16, else Monte Carlo with `seed`, counting
  the observed assignment ((1 + hits) / (1 + num_resamples)) so p is never 0.
  """
  diffs = np.asarray(diffs, np.float64)
  if diffs.size == 0:
    return float("nan")
  observed = abs(diffs.mean())
  tolerance = 1e-12 * max(1.0, float(np.abs(diffs).max()))  # equal means must count despite float rounding
  if diffs.size <= _EXACT_PERMUTATION_MAX_PAIRS:
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=diffs.size)))
    return float(np.mean(np.abs(signs @ diffs / diffs.size) >= observed - tolerance))
  rng = np.random.default_rng(seed)
  hits = 0
  for start in range(0, num_resamples, 4096):  # chunks bound memory for many pairs
    signs = rng.choice((1.0, -1.0), size=(min(4096, num_resamples - start), diffs.size))
    hits += int(np.sum(np.abs(signs @ diffs / diffs.size) >= observed - tolerance))
  return (1 + hits) / (1 + num_resamples)


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}{'' if n == 1 else 's'}"


def _number(x: float) -> str:
  # Float noise (a mean of +-0.037 pairs is 7e-18, not 0) must read as 0; real small effects keep 1 digit.
  if abs(x) < 1e-9:
    return "0.00"
  return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.1g}"


def _p_value(p: float) -> str:
  return "n/a" if math.isnan(p) else ("< 0.0001" if p < 1e-4 else f"= {p:.2g}")


def metric_phrase(metric: str) -> str:
  """'balanced_accuracy' -> 'balanced accuracy'; 'recall/mito' -> 'recall of mito'."""
  if metric.startswith("recall/"):
    return f"recall of {metric[len('recall/') :]}"
  return {"nll": "NLL (lower is better)", "roc_auc_ovr": "ROC AUC"}.get(metric, metric.replace("_", " "))


def compare_arms(
  rows: Sequence[Mapping[str, object]],
  arm_a: str,
  arm_b: str,
  metric: str,
  split: str,
  num_resamples: int = 10_000,
  seed: int = 0,
  *,
  n_per_class=ANY_SIZE,
  higher_is_better: bool | None = None,
) -> dict[str, object]:
  """Paired comparison of arm_b against arm_a on one metric and split (optionally one n_per_class).

  Returns a dict with arm_a, arm_b, metric, split, n_per_class ('any' when pooled), n_pairs, mean_diff
  (b - a), ci_low, ci_high, wilcoxon_p, permutation_p, frac_b_better, frac_ties, verdict ('helps', 'hurts',
  'no clear difference', by whether the CI excludes 0), tentative (a verdict the Wilcoxon test does not back at
  p < 0.05, common with few pairs), unmatched_a, unmatched_b, nan_pairs and sentence. `higher_is_better` defaults to
  False for loss-like metrics (nll) and True otherwise; it decides 'helps' vs 'hurts' and who 'wins'.
  """
  if higher_is_better is None:
    higher_is_better = metric not in LOWER_IS_BETTER
  paired = paired_differences(rows, arm_a, arm_b, metric, split, n_per_class=n_per_class)
  diffs = paired["diffs"]
  n = int(diffs.size)
  low, high = bootstrap_mean_ci(diffs, num_resamples=num_resamples, seed=seed)
  better = diffs > 0 if higher_is_better else diffs < 0
  p_wilcoxon = wilcoxon_p(diffs)
  verdict = "no clear difference"
  if n >= 2 and (low > 0 or high < 0):
    verdict = "helps" if (low > 0) == higher_is_better else "hurts"
  result = {
    "arm_a": arm_a,
    "arm_b": arm_b,
    "metric": metric,
    "split": split,
    "n_per_class": n_per_class,
    "n_pairs": n,
    "mean_diff": float(diffs.mean()) if n else float("nan"),
    "ci_low": low,
    "ci_high": high,
    "wilcoxon_p": p_wilcoxon,
    "permutation_p": sign_flip_p(diffs, num_resamples=num_resamples, seed=seed),
    "frac_b_better": float(better.mean()) if n else float("nan"),
    "frac_ties": float((diffs == 0).mean()) if n else float("nan"),
    "verdict": verdict,
    # The percentile bootstrap is too narrow for a handful of pairs; say so when the rank test disagrees.
    "tentative": verdict != "no clear difference" and not p_wilcoxon < 0.05,
    "unmatched_a": paired["unmatched_a"],
    "unmatched_b": paired["unmatched_b"],
    "nan_pairs": paired["nan_pairs"],
  }
  result["sentence"] = _sentence(result)
  return result


def _sentence(r: Mapping[str, object]) -> str:
  size = r["n_per_class"]
  size_text = (
    "" if size == "any" else (" (all training images)" if size is None else f" ({size} training images per class)")
  )
  split = _SPLIT_PHRASES.get(r["split"], r["split"])
  head = f"{r['arm_a']} vs {r['arm_b']}{size_text}: {metric_phrase(r['metric'])} on {split}"
  notes = []
  if r["unmatched_a"] or r["unmatched_b"]:
    unmatched = len(r["unmatched_a"]) + len(r["unmatched_b"])
    notes.append(f"left out: {_count(unmatched, 'model')} without a partner in the other arm")
  if r["nan_pairs"]:
    notes.append(f"left out: {_count(len(r['nan_pairs']), 'pair')} with an undefined (nan) score")
  tail = "".join(f"; {note}" for note in notes)
  n = r["n_pairs"]
  if n == 0:
    return f"{head}: no matched models to compare{tail}."
  mean = r["mean_diff"]
  direction = "the same" if mean == 0 else f"{_number(abs(mean))} {'higher' if mean > 0 else 'lower'}"
  models = _count(n, "matched model")
  if n < 2:
    return f"{head} is {direction} with {r['arm_b']} ({models}{tail}): too few pairs to tell; no clear difference."
  evidence = (
    f"95 % CI {_number(r['ci_low'])} to {_number(r['ci_high'])}; {models}; Wilcoxon p {_p_value(r['wilcoxon_p'])}"
  )
  if r["verdict"] == "no clear difference":
    conclusion = "no clear difference"
  else:
    conclusion = f"{r['arm_b']} {r['verdict']}"
    if r["tentative"]:
      conclusion += ", tentatively (the Wilcoxon test does not confirm it at p < 0.05)"
  return f"{head} is {direction} with {r['arm_b']} ({evidence}{tail}): {conclusion}."


def compare_all(
  rows: Sequence[Mapping[str, object]],
  metric: str,
  splits: Sequence[str] = ("test", "holdout"),
  baseline: str | None = None,
  *,
  num_resamples: int = 10_000,
  seed: int = 0,
) -> list[dict[str, object]]:
  """compare_arms of every other arm against `baseline` (default: the first arm in row order), for each
  split and each n_per_class the baseline or that arm has on that split."""
  if not rows:
    raise ValueError("no result rows to compare; read them with workdir.results.read_rows(results.csv).")
  arms = list(dict.fromkeys(str(r["arm"]) for r in rows))
  baseline = arms[0] if baseline is None else baseline
  _check_rows(rows, metric, (baseline,))
  if len(arms) < 2:
    raise ValueError(f"the results hold only the arm {arms}; a comparison needs at least two arms.")
  present_splits = sorted({str(r["split"]) for r in rows})
  results = []
  for split in splits:
    if split not in present_splits:
      raise ValueError(f"split {split!r} has no rows; splits present: {present_splits}. Pass splits= accordingly.")
    for arm in arms:
      if arm == baseline:
        continue
      sizes = list(dict.fromkeys(r["n_per_class"] for r in rows if r["split"] == split and r["arm"] in (arm, baseline)))
      for size in sorted(sizes, key=lambda s: (s is None, s or 0)):
        results.append(compare_arms(rows, baseline, arm, metric, split, num_resamples, seed, n_per_class=size))
  return results


def comparisons_markdown(results: Sequence[Mapping[str, object]]) -> str:
  """A markdown table of `compare_arms` results followed by one plain-words sentence per comparison."""
  if not results:
    return "No arm comparisons (the study has a single arm).\n"
  lines = [
    "| comparison | metric | split | n/class | pairs | mean diff (B - A) | 95 % CI | Wilcoxon p | permutation p "
    "| B better in | verdict |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    size = "all" if r["n_per_class"] is None else r["n_per_class"]
    ci = "n/a" if math.isnan(r["ci_low"]) else f"{r['ci_low']:.3f} to {r['ci_high']:.3f}"
    better = "n/a" if math.isnan(r["frac_b_better"]) else f"{100 * r['frac_b_better']:.0f} %"
    mean = "n/a" if math.isnan(r["mean_diff"]) else f"{r['mean_diff']:+.3f}"
    unmatched = len(r["unmatched_a"]) + len(r["unmatched_b"])
    pairs = f"{r['n_pairs']}" + (f" ({unmatched} unmatched)" if unmatched else "")
    lines.append(
      f"| {r['arm_a']} (A) vs {r['arm_b']} (B) | {r['metric']} | {r['split']} | {size} | {pairs} | {mean} | {ci} "
      f"| {_p_value(r['wilcoxon_p']).lstrip('= ')} | {_p_value(r['permutation_p']).lstrip('= ')} | {better} "
      f"| {r['verdict']}{' (tentative)' if r['tentative'] else ''} |"
    )
  lines.append("")
  lines.extend(f"- {r['sentence']}" for r in results)
  lines.append("")
  lines.append(
    "Pairs are models with the same seed, repeat, fold and training-set size in both arms. Models of one study "
    "share training images, so intervals and p-values are somewhat optimistic; p-values are not adjusted for the "
    "number of comparisons."
  )
  return "\n".join(lines) + "\n"
