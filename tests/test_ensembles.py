"""Ensembles (mean probability, majority vote, BioNIC's leaky vote) and reading predictions CSVs back."""

import statistics

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from jaxcell.analysis.ensembles import (
  bionic_leaky_vote,
  ensemble_metrics,
  majority_vote,
  mean_probability,
  out_of_fold_probs,
)
from jaxcell.workdir.predictions import append_predictions, load_prediction_table, prediction_rows

CLASSES = ["bad", "good", "maybe"]


def random_probs(num_models, num_images, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.ones(num_classes) * 0.7, size=(num_models, num_images))


def brute_force_vote(probs):
  """Majority vote written out per image, as the docstring describes it."""
  preds = []
  for i in range(probs.shape[1]):
    counts = np.bincount(probs[:, i].argmax(axis=1), minlength=probs.shape[2])
    tied = [c for c in range(probs.shape[2]) if counts[c] == counts.max()]
    mean = probs[:, i].mean(axis=0)
    preds.append(sorted(tied, key=lambda c: (-mean[c], c))[0])
  return np.array(preds)


# --- ensembles ----------------------------------------------------------------------------------


def test_mean_probability_averages_models_and_rejects_nan():
  probs = random_probs(4, 6, 3)
  np.testing.assert_allclose(mean_probability(probs), probs.mean(axis=0))
  probs[1, 2] = np.nan
  with pytest.raises(ValueError, match="out_of_fold_probs"):
    mean_probability(probs)
  with pytest.raises(ValueError, match="shape"):
    mean_probability(probs[0])
  with pytest.raises(ValueError, match="sum to 1"):
    mean_probability(np.full((2, 3, 3), 0.5))


def test_majority_vote_tie_breaks():
  probs = np.array(
    [
      # image 0: one vote each for 0 and 1; class 1 has the higher mean probability -> 1
      # image 1: one vote each, equal mean probabilities -> the lower index, 0
      # image 2: votes 1 and 2 tie; class 0 has the highest mean but no vote-tie -> between 1 and 2, 2 wins
      [[0.6, 0.4, 0.0], [0.5, 0.3, 0.2], [0.45, 0.5, 0.05]],
      [[0.1, 0.9, 0.0], [0.3, 0.5, 0.2], [0.44, 0.0, 0.56]],
    ]
  )
  preds, share = majority_vote(probs)
  np.testing.assert_array_equal(preds, [1, 0, 2])
  np.testing.assert_allclose(share, [0.5, 0.5, 0.5])


def test_majority_vote_matches_brute_force_and_clear_majorities():
  probs = random_probs(5, 200, 3, seed=1)
  preds, share = majority_vote(probs)
  np.testing.assert_array_equal(preds, brute_force_vote(probs))
  model_preds = probs.argmax(axis=2)
  np.testing.assert_allclose(share, (model_preds == preds).mean(axis=0))
  clear = share > 0.5  # an absolute majority never depends on the tie-break
  assert clear.sum() > 50
  for i in np.flatnonzero(clear):
    assert preds[i] == statistics.mode(model_preds[:, i])


def test_leaky_vote_reproduces_statistics_mode_with_target_first():
  probs = random_probs(4, 300, 3, seed=2)
  targets = np.random.default_rng(3).integers(0, 3, 300)
  model_preds = probs.argmax(axis=2)
  expected = [statistics.mode([int(t), *model_preds[:, i].tolist()]) for i, t in enumerate(targets)]
  np.testing.assert_array_equal(bionic_leaky_vote(probs, targets), expected)


def test_leaky_vote_differs_from_honest_vote_on_crafted_example():
  # Three models vote 0, 0, 1 for an image whose true class is 1: the honest vote says 0 (wrong); BioNIC's
  # ballot [1, 0, 0, 1] ties 2-2 and statistics.mode returns the target first, so it is scored correct.
  probs = np.array([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]]])
  targets = np.array([1])
  assert majority_vote(probs)[0].tolist() == [0]
  assert bionic_leaky_vote(probs, targets).tolist() == [1]
  # With a clear majority the label cannot sway it.
  assert bionic_leaky_vote(probs[:2], targets).tolist() == [0]


def test_ensemble_metrics_match_sklearn():
  probs = random_probs(5, 120, 3, seed=4)
  rng = np.random.default_rng(5)
  # Targets that agree with the ensemble 70 % of the time, so metrics are far from chance and from 1.
  targets = np.where(rng.random(120) < 0.7, probs.mean(axis=0).argmax(axis=1), rng.integers(0, 3, 120))
  out = ensemble_metrics(targets, probs, CLASSES, include_leaky=True)
  assert out["mean_prob/accuracy"] == pytest.approx(accuracy_score(targets, probs.mean(axis=0).argmax(axis=1)))
  votes = brute_force_vote(probs)
  assert out["majority_vote/accuracy"] == pytest.approx(accuracy_score(targets, votes))
  assert out["majority_vote/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, votes))
  members = [accuracy_score(targets, p.argmax(axis=1)) for p in probs]
  assert out["member_mean/accuracy"] == pytest.approx(np.mean(members))
  assert out["num_models"] == 5
  assert "mean_prob/recall/maybe" in out and "mean_prob/nll" in out
  # The leak can only help: every image the honest vote gets right, the leaky one does too.
  assert out["bionic_leaky_vote/bionic_weighted_accuracy"] >= out["majority_vote/bionic_weighted_accuracy"]
  with pytest.raises(ValueError, match="class_names"):
    ensemble_metrics(targets, probs, CLASSES[:2])


# --- prediction CSVs ----------------------------------------------------------------------------


def write_study_csv(path, arm, lanes, paths, targets, probs_by_lane, index_by_lane, n_per_class=None):
  """Writes rows exactly as the study does, one lane after the other."""
  for lane in lanes:
    fields = {"arm": arm, "lane": lane, "seed": 0, "repeat": lane // 2, "fold": lane % 2, "n_per_class": n_per_class}
    idx = index_by_lane[lane]
    rows = prediction_rows(fields, [paths[i] for i in idx], targets[idx], probs_by_lane[lane][idx], CLASSES)
    append_predictions(str(path), rows)


def test_holdout_table_aligns_models_by_path(tmp_path):
  rng = np.random.default_rng(6)
  paths = [f"{CLASSES[i % 3]}/img{i:02d}.png" for i in range(9)]
  targets = np.arange(9) % 3
  probs = random_probs(4, 9, 3, seed=7)
  # Each lane writes the holdout images in its own order; lanes of two arms share the file.
  order = {lane: rng.permutation(9) for lane in range(8)}
  csv_path = tmp_path / "predictions_holdout.csv"
  write_study_csv(csv_path, "cnn", [0, 1, 2, 3], paths, targets, {k: probs[k] for k in range(4)}, order)
  write_study_csv(csv_path, "resnet", [4, 5], paths, targets, {4: probs[0], 5: probs[1]}, order)
  # The study records a lane's linear-probe predictions under a second arm with the same lane index.
  write_study_csv(csv_path, "resnet_lsr", [4, 5], paths, targets, {4: probs[2], 5: probs[3]}, order)

  table = load_prediction_table(csv_path)
  assert table.class_names == tuple(CLASSES)
  assert list(table.arms) == ["cnn", "resnet", "resnet_lsr"]
  cnn = table["cnn"]
  assert cnn.complete and cnn.probs.shape == (4, 9, 3)
  sorted_idx = np.argsort(paths)
  assert cnn.paths == tuple(np.array(paths)[sorted_idx])
  np.testing.assert_array_equal(cnn.targets, targets[sorted_idx])
  np.testing.assert_allclose(cnn.probs, probs[:, sorted_idx], atol=1e-6)
  np.testing.assert_array_equal(cnn.lanes, [0, 1, 2, 3])
  np.testing.assert_array_equal(cnn.repeats, [0, 0, 1, 1])
  assert cnn.n_per_class is None
  np.testing.assert_allclose(table["resnet"].probs, probs[:2, sorted_idx], atol=1e-6)
  np.testing.assert_allclose(table["resnet_lsr"].probs, probs[2:, sorted_idx], atol=1e-6)
  with pytest.raises(KeyError, match="cnn"):
    table["vit"]


def test_out_of_fold_probs_average_the_repeats(tmp_path):
  paths = [f"img{i}.png" for i in range(6)]
  targets = np.array([0, 1, 2, 0, 1, 2])
  probs = random_probs(4, 6, 3, seed=8)
  # Two repeats of 2 folds: repeat 0 splits {0,1,2}/{3,4,5}, repeat 1 splits {0,3,4}/{1,2,5}.
  folds = {0: [0, 1, 2], 1: [3, 4, 5], 2: [0, 3, 4], 3: [1, 2, 5]}
  csv_path = tmp_path / "predictions_test.csv"
  write_study_csv(csv_path, "cnn", [0, 1, 2, 3], paths, targets, {k: probs[k] for k in range(4)}, folds)
  table = load_prediction_table(csv_path)
  arm = table["cnn"]
  assert not arm.complete
  assert arm.present.sum() == 12
  oof, oof_paths = out_of_fold_probs(table)
  assert oof_paths == tuple(paths)
  for i in range(6):
    models = [m for m in range(4) if i in folds[m]]
    np.testing.assert_allclose(oof[i], probs[models, i].mean(axis=0), atol=1e-6)
  with pytest.raises(ValueError, match="out_of_fold_probs"):
    mean_probability(arm.probs)


def test_sizes_must_be_selected_when_an_arm_mixes_them(tmp_path):
  paths = ["a.png", "b.png", "c.png"]
  targets = np.array([0, 1, 2])
  probs = random_probs(2, 3, 3, seed=9)
  csv_path = tmp_path / "predictions_holdout.csv"
  everything = {0: [0, 1, 2], 1: [0, 1, 2]}
  write_study_csv(csv_path, "cnn", [0], paths, targets, {0: probs[0]}, everything, n_per_class=10)
  write_study_csv(csv_path, "cnn", [1], paths, targets, {1: probs[1]}, everything, n_per_class=None)
  with pytest.raises(ValueError, match="n_per_class"):
    load_prediction_table(csv_path)
  np.testing.assert_allclose(load_prediction_table(csv_path, n_per_class=10)["cnn"].probs[0], probs[0], atol=1e-6)
  assert load_prediction_table(csv_path, n_per_class=None)["cnn"].lanes.tolist() == [1]
  with pytest.raises(ValueError, match="no rows"):
    load_prediction_table(csv_path, n_per_class=20)


def test_bad_csvs_get_clear_errors(tmp_path):
  header = "arm,lane,seed,repeat,fold,n_per_class,path,target,prediction,confidence,p_a,p_b\n"
  row = "cnn,0,0,0,0,,x.png,a,a,0.9,0.9,0.1\n"
  cases = {
    "missing": ("arm,lane,path,target,prediction,p_a,p_b\ncnn,0,x.png,a,a,0.9,0.1\n", "lacks columns"),
    "extra_field": (header + row + "cnn,1,0,0,1,,x.png,a,a,0.9,0.9,0.05,0.05\n", "more fields than the header"),
    "unknown_class": (header + "cnn,0,0,0,0,,x.png,c,a,0.9,0.9,0.1\n", "not one of the p_<class> columns"),
    "swapped_columns": (header + "cnn,0,0,0,0,,x.png,a,b,0.9,0.9,0.1\n", "not the most probable class"),
    "duplicate": (header + row + row, "twice"),
    "bad_lane": (header + row.replace("cnn,0,", "cnn,zero,"), "must be integers"),
    "empty": (header, "no prediction rows"),
    "one_class": ("arm,lane,seed,repeat,fold,n_per_class,path,target,prediction,p_a\ncnn,0,0,0,0,,x,a,a,1\n", "two"),
    "conflicting_target": (header + row + "cnn,1,0,0,1,,x.png,b,a,0.9,0.9,0.1\n", "another elsewhere"),
  }
  for name, (text, message) in cases.items():
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
      load_prediction_table(path)
