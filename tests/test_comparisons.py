"""Paired arm comparisons: pairing by identity, bootstrap interval, Wilcoxon and permutation p-values, sentences."""

import itertools

import numpy as np
import pytest
from scipy import stats

from jaxcell.analysis import comparisons as cmp


def _rows(arm, scores, *, split="holdout", n_per_class=10, seeds=(0,), repeats=(0,), start_fold=0):
  """Result rows of one arm: one per (seed, repeat, fold), folds numbered from start_fold."""
  rows, scores = [], iter(scores)
  for seed, repeat in itertools.product(seeds, repeats):
    for fold, score in zip(itertools.count(start_fold), scores):
      rows.append(
        dict(arm=arm, lane=len(rows), seed=seed, repeat=repeat, fold=fold, n_per_class=n_per_class, split=split,
             num_images=50, balanced_accuracy=float(score), nll=1.0 - float(score))
      )  # fmt: skip
      if fold - start_fold == 4:
        break
  return rows


def test_pairs_match_identities_and_report_unmatched():
  a = _rows("scratch", [0.5, 0.6, 0.7])  # folds 0..2
  b = _rows("imagenet", [0.9, 0.8, 0.75], start_fold=1)  # folds 1..3
  paired = cmp.paired_differences(b + a, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert [(p["fold"], p["a"], p["b"]) for p in paired["pairs"]] == [(1, 0.6, 0.9), (2, 0.7, 0.8)]
  np.testing.assert_allclose(paired["diffs"], [0.3, 0.1])
  assert paired["unmatched_a"] == [dict(seed=0, repeat=0, fold=0, n_per_class=10)]
  assert paired["unmatched_b"] == [dict(seed=0, repeat=0, fold=3, n_per_class=10)]
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert result["n_pairs"] == 2 and "left out: 2 models without a partner" in result["sentence"]


def test_pairs_never_mix_split_seed_or_size():
  a = (
    _rows("scratch", [0.5], seeds=(0,))
    + _rows("scratch", [0.5], split="test")
    + _rows("scratch", [0.5], n_per_class=20)
  )
  b = _rows("imagenet", [0.9], seeds=(1,)) + _rows("imagenet", [0.9], n_per_class=None)
  paired = cmp.paired_differences(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert paired["pairs"] == [] and len(paired["unmatched_a"]) == 2 and len(paired["unmatched_b"]) == 2
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert result["verdict"] == "no clear difference" and "no matched models" in result["sentence"]


def test_bootstrap_ci_contains_true_shift():
  rng = np.random.default_rng(1)
  base = rng.uniform(0.4, 0.7, 40)  # per-split difficulty, shared by both arms
  shift = 0.05
  a = _rows("scratch", base, seeds=range(8), repeats=(0,))
  b = _rows("imagenet", base + shift + rng.normal(0, 0.03, 40), seeds=range(8), repeats=(0,))
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert result["n_pairs"] == 40
  assert result["ci_low"] < shift < result["ci_high"]
  assert result["ci_low"] > 0 and result["verdict"] == "helps"
  assert result["wilcoxon_p"] < 0.001 and result["permutation_p"] < 0.001


def test_wilcoxon_matches_scipy_and_handles_zeros():
  diffs = np.array([0.1, -0.05, 0.2, 0.15, 0.0, 0.3, -0.02, 0.07])
  assert cmp.wilcoxon_p(diffs) == pytest.approx(stats.wilcoxon(diffs, alternative="two-sided").pvalue)
  a = _rows("scratch", np.zeros(5))
  b = _rows("imagenet", diffs[:5])
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs[:5]).pvalue)
  assert cmp.wilcoxon_p(np.zeros(6)) == 1.0
  same = cmp.compare_arms(a + _rows("imagenet", np.zeros(5)), "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert same["wilcoxon_p"] == 1.0 and same["permutation_p"] == 1.0 and same["verdict"] == "no clear difference"
  assert same["frac_ties"] == 1.0 and same["frac_b_better"] == 0.0


def test_exact_permutation_p_hand_example():
  # diffs (1, 2, 3): mean 2. Of the 8 sign flips, only +++ and --- reach |mean| >= 2 -> p = 2/8.
  assert cmp.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
  # diffs (1, -1, 2): |mean| 2/3; sign patterns with |sum| >= 2: sums are +-2 (x2 each: (+,-,+),(-,+,+)...)
  sums = [abs(s1 * 1 - s2 * 1 + s3 * 2) for s1, s2, s3 in itertools.product((1, -1), repeat=3)]
  assert cmp.sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(np.mean([s >= 2 for s in sums]))
  assert cmp.sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)


def test_monte_carlo_permutation_is_seeded_and_close_to_exact():
  rng = np.random.default_rng(3)
  diffs = rng.normal(0.1, 0.3, 20)
  p1 = cmp.sign_flip_p(diffs, num_resamples=20_000, seed=5)
  assert p1 == cmp.sign_flip_p(diffs, num_resamples=20_000, seed=5)
  # t-test on the same diffs as a rough reference for the permutation distribution.
  assert abs(p1 - stats.ttest_1samp(diffs, 0).pvalue) < 0.05
  assert cmp.sign_flip_p(np.full(30, 0.2), num_resamples=999) == pytest.approx(1 / 1000)


@pytest.mark.parametrize(
  "delta, metric, verdict, word",
  [
    (0.12, "balanced_accuracy", "helps", "higher"),
    (-0.12, "balanced_accuracy", "hurts", "lower"),
    (0.0, "balanced_accuracy", "no clear difference", None),
    (-0.12, "nll", "hurts", "higher"),  # nll = 1 - score here: lower accuracy means higher loss, which hurts
  ],
)
def test_sentence_wording(delta, metric, verdict, word):
  rng = np.random.default_rng(0)
  base = rng.uniform(0.4, 0.7, 20)
  noise = rng.normal(0, 0.02, 20) if delta else rng.normal(0, 0.05, 20)
  a = _rows("scratch", base, seeds=range(4))
  b = _rows("imagenet", base + delta + noise, seeds=range(4))
  result = cmp.compare_arms(a + b, "scratch", "imagenet", metric, "holdout")
  assert result["verdict"] == verdict
  sentence = result["sentence"]
  assert sentence.startswith("scratch vs imagenet: ")
  assert "on the holdout" in sentence and "20 matched models" in sentence and "Wilcoxon p" in sentence
  if verdict == "no clear difference":
    assert sentence.endswith(": no clear difference.")
  else:
    assert f"{word} with imagenet (95 % CI" in sentence and sentence.endswith(f": imagenet {verdict}.")


def test_sentence_example_format():
  a = _rows("scratch", [0.5, 0.6, 0.55, 0.52, 0.58])
  b = _rows("imagenet", [0.62, 0.71, 0.68, 0.63, 0.71])
  sentence = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")["sentence"]
  assert sentence.startswith(
    "scratch vs imagenet: balanced accuracy on the holdout is 0.12 higher with imagenet (95 % CI "
  )
  # All 5 pairs favour imagenet, so the bootstrap interval excludes 0, but with 5 pairs the exact Wilcoxon test
  # cannot go below p = 2/32: the verdict is flagged as tentative.
  assert sentence.endswith(
    "; 5 matched models; Wilcoxon p = 0.062): imagenet helps, tentatively (the Wilcoxon test does not confirm it "
    "at p < 0.05)."
  )
  a, b = (
    _rows("scratch", np.full(10, 0.5), seeds=range(2)),
    _rows("imagenet", np.linspace(0.6, 0.7, 10), seeds=range(2)),
  )
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert result["verdict"] == "helps" and not result["tentative"] and result["sentence"].endswith(": imagenet helps.")


def test_nan_scores_are_reported_not_silently_dropped():
  a = _rows("scratch", [0.5, float("nan"), 0.6])
  b = _rows("imagenet", [0.7, 0.8, 0.9])
  result = cmp.compare_arms(a + b, "scratch", "imagenet", "balanced_accuracy", "holdout")
  assert (
    result["n_pairs"] == 2
    and len(result["nan_pairs"]) == 1
    and "left out: 1 pair with an undefined" in result["sentence"]
  )


def test_compare_all_and_markdown():
  rows = []
  for size in (5, None):
    for split in ("test", "holdout"):
      rows += _rows("scratch", [0.5, 0.52, 0.48, 0.5, 0.51], split=split, n_per_class=size)
      rows += _rows("imagenet", [0.7, 0.69, 0.72, 0.7, 0.75], split=split, n_per_class=size)
      rows += _rows("cellnet", [0.4, 0.42, 0.38, 0.45, 0.41], split=split, n_per_class=size)
  results = cmp.compare_all(rows, "balanced_accuracy")
  keys = [(r["arm_a"], r["arm_b"], r["split"], r["n_per_class"]) for r in results]
  assert keys == [("scratch", b, s, n) for s in ("test", "holdout") for b in ("imagenet", "cellnet") for n in (5, None)]
  assert [r["verdict"] for r in results[:4]] == ["helps", "helps", "hurts", "hurts"]
  assert "(5 training images per class)" in results[0]["sentence"]
  assert "on the CV test folds" in results[0]["sentence"]
  md = cmp.comparisons_markdown(results)
  assert (
    md.count("\n| scratch (A) vs") == 8
    and "| helps (tentative) |" in md
    and "| holdout | all |" in md
    and "- scratch vs cellnet" in md
  )
  assert cmp.compare_all(rows, "balanced_accuracy", baseline="imagenet", splits=("holdout",))[0]["arm_b"] == "scratch"
  assert "single arm" in cmp.comparisons_markdown([])


def test_bad_inputs_raise_clear_errors():
  rows = _rows("scratch", [0.5, 0.6]) + _rows("imagenet", [0.7, 0.8])
  with pytest.raises(ValueError, match="unknown metric 'f1'"):
    cmp.compare_arms(rows, "scratch", "imagenet", "f1", "holdout")
  with pytest.raises(ValueError, match="arm 'vgg' is not in the results"):
    cmp.compare_arms(rows, "scratch", "vgg", "balanced_accuracy", "holdout")
  with pytest.raises(ValueError, match="two different arms"):
    cmp.compare_arms(rows, "scratch", "scratch", "balanced_accuracy", "holdout")
  with pytest.raises(ValueError, match="has two rows"):
    cmp.paired_differences(rows + rows[:1], "scratch", "imagenet", "balanced_accuracy", "holdout")
  with pytest.raises(ValueError, match="split 'test' has no rows"):
    cmp.compare_all(rows, "balanced_accuracy")
  with pytest.raises(ValueError, match="no result rows"):
    cmp.compare_all([], "balanced_accuracy")
  with pytest.raises(ValueError, match="at least two arms"):
    cmp.compare_all(rows[:2], "balanced_accuracy", splits=("holdout",))
