"""Confident learning: thresholds, confident joint and flagged sets checked by hand and on synthetic label noise."""

import csv

import numpy as np
import pytest

from jaxcell.analysis import purification as pur
from jaxcell.workdir import predictions as workdir_predictions

# A hand example, 3 classes x 4 images. Class 2 is hard (the model is unsure of it), so a plain argmax rule
# would flag image 11 (labelled 2, argmax 0), though no class is confident for it. Image 3 is labelled 0 but
# its class-2 probability 0.5 exceeds t_2, while its class-0 probability 0.3 is far below t_0.
HAND_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
HAND_PROBS = np.array(
  [
    [0.90, 0.05, 0.05],
    [0.80, 0.10, 0.10],
    [0.85, 0.10, 0.05],
    [0.30, 0.20, 0.50],  # flipped: truly class 2
    [0.10, 0.80, 0.10],
    [0.10, 0.70, 0.20],
    [0.45, 0.55, 0.00],  # right by argmax, but below every threshold
    [0.30, 0.60, 0.10],
    [0.20, 0.30, 0.50],
    [0.30, 0.20, 0.50],
    [0.10, 0.40, 0.50],
    [0.45, 0.30, 0.25],  # argmax says class 0, but 0.45 < t_0: ambiguous, not confidently another class
  ]
)
HAND_PATHS = [f"img{i}.png" for i in range(12)]
CLASSES = ["nucleus", "mito", "golgi"]


def test_thresholds_hand_checked():
  t = pur.per_class_thresholds(HAND_LABELS, HAND_PROBS)
  np.testing.assert_allclose(t, [(0.9 + 0.8 + 0.85 + 0.3) / 4, (0.8 + 0.7 + 0.55 + 0.6) / 4, (0.5 * 3 + 0.25) / 4])


def test_confident_joint_hand_checked():
  raw = pur.confident_joint(HAND_LABELS, HAND_PROBS, calibrate=False)
  # Class 1: images 6 and 7 reach no threshold (t_1 = 0.6625); class 2: image 11 reaches none.
  np.testing.assert_array_equal(raw, [[3, 0, 1], [0, 2, 0], [0, 0, 3]])
  np.testing.assert_array_equal(pur.confident_classes(HAND_LABELS, HAND_PROBS), [0, 0, 0, 2, 1, 1, -1, -1, 2, 2, 2, -1])
  calibrated = pur.confident_joint(HAND_LABELS, HAND_PROBS)
  # Each row is rescaled to the class size (4), per eq. 2 of the paper.
  np.testing.assert_allclose(calibrated, [[3, 0, 1], [0, 4, 0], [0, 0, 4]])
  np.testing.assert_allclose(pur.estimate_joint(HAND_LABELS, HAND_PROBS).sum(), 1.0)


def test_calibration_rescales_rows_to_class_counts():
  labels = np.array([0, 0, 0, 1, 1])
  probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]])
  # t = [0.6, 0.7]; image 2 -> class 1; image 4 reaches no threshold; raw [[2, 1], [0, 1]].
  np.testing.assert_array_equal(pur.confident_joint(labels, probs, calibrate=False), [[2, 1], [0, 1]])
  np.testing.assert_allclose(pur.confident_joint(labels, probs), [[2, 1], [0, 2]])


@pytest.mark.parametrize("method", ["prune_by_noise_rate", "prune_by_class", "both", "confident_joint"])
def test_hand_example_flags_exactly_the_flipped_image(method):
  mask = pur.find_label_issues(HAND_LABELS, HAND_PROBS, method=method)
  assert np.flatnonzero(mask).tolist() == [3]


def test_argmax_baseline_also_flags_the_ambiguous_image():
  assert np.flatnonzero(pur.find_label_issues(HAND_LABELS, HAND_PROBS, method="argmax")).tolist() == [3, 11]


def test_synthetic_flipped_labels_are_found():
  rng = np.random.default_rng(0)
  n, k = 600, 4
  true = rng.integers(0, k, n)
  # OOF probabilities of a decent model of the *true* classes, with class-dependent confidence.
  logits = rng.normal(0, 1, (n, k)) + np.array([3.0, 2.5, 2.0, 3.0])[true, None] * np.eye(k)[true]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  flipped = rng.choice(n, 60, replace=False)
  given = true.copy()
  given[flipped] = (true[flipped] + rng.integers(1, k, 60)) % k
  mask = pur.find_label_issues(given, probs)
  found = set(np.flatnonzero(mask))
  recall = len(found & set(flipped)) / 60
  precision = len(found & set(flipped)) / max(1, len(found))
  assert recall >= 0.8 and precision >= 0.8, (recall, precision)
  # The ranking puts flipped images first: the 30 least self-confident are nearly all flipped.
  top = pur.rank_label_issues(given, probs)[:30]
  assert len(set(top) & set(flipped)) >= 27


def test_rankings_and_scores():
  self_conf = pur.label_quality_scores(HAND_LABELS, HAND_PROBS)
  np.testing.assert_allclose(self_conf[[3, 11]], [0.3, 0.25])
  margin = pur.label_quality_scores(HAND_LABELS, HAND_PROBS, "normalized_margin")
  np.testing.assert_allclose(margin[[3, 11]], [(0.3 - 0.5 + 1) / 2, (0.25 - 0.45 + 1) / 2])
  assert pur.rank_label_issues(HAND_LABELS, HAND_PROBS)[:2].tolist() == [11, 3]
  assert pur.rank_label_issues(HAND_LABELS, HAND_PROBS, mask=[i in (3, 6) for i in range(12)]).tolist() == [3, 6]


def test_purification_table_evidence_and_kinds(tmp_path):
  rows = pur.purification_table(HAND_PATHS, HAND_LABELS, HAND_PROBS, CLASSES, num_models=5)
  assert len(rows) == 1
  row = rows[0]
  assert row["path"] == "img3.png" and row["given_label"] == "nucleus" and row["suggested_label"] == "golgi"
  assert row["kind"] == "likely_mislabelled" and row["num_models"] == 5 and row["rank"] == 1
  np.testing.assert_allclose([row["p_given"], row["p_suggested"], row["margin"]], [0.3, 0.5, 0.2])

  # With the argmax rule image 11 is flagged too: no class reaches its threshold, so it is 'ambiguous',
  # and ranks first (lowest self-confidence); its suggestion is the most probable other class.
  rows = pur.purification_table(
    HAND_PATHS, HAND_LABELS, HAND_PROBS, CLASSES, num_models=np.arange(1, 13), method="argmax"
  )
  assert [(r["index"], r["kind"], r["suggested_label"], r["num_models"]) for r in rows] == [
    (11, "ambiguous", "nucleus", 12),
    (3, "likely_mislabelled", "golgi", 4),
  ]
  # A confident other class that leads by less than close_margin counts as ambiguous (two classes close).
  rows = pur.purification_table(HAND_PATHS, HAND_LABELS, HAND_PROBS, CLASSES, close_margin=0.25)
  assert rows[0]["kind"] == "ambiguous"

  out = tmp_path / "sub" / "purification.csv"
  pur.write_purification_csv(out, rows)
  with out.open() as handle:
    read = list(csv.DictReader(handle))
  assert list(read[0]) == list(pur.TABLE_COLUMNS) and read[0]["path"] == "img3.png" and read[0]["margin"] == "0.200000"
  pur.write_purification_csv(tmp_path / "empty.csv", [])
  assert (tmp_path / "empty.csv").read_text().strip() == ",".join(pur.TABLE_COLUMNS)


@pytest.mark.parametrize(
  "labels, probs, match",
  [
    (HAND_LABELS[:-1], HAND_PROBS, "one entry per row"),
    (HAND_LABELS, HAND_PROBS * [1.0, 1.0, 0.5], "sum to 1"),
    (HAND_LABELS, HAND_PROBS * 2, r"\[0, 1\]"),
    (np.where(HAND_LABELS == 1, 0, HAND_LABELS), HAND_PROBS, r"classes \[1\] have no examples"),
    (HAND_LABELS + 0.5, HAND_PROBS, "integer class indices"),
    (HAND_LABELS + 1, HAND_PROBS, r"must lie in \[0, 3\)"),
    (HAND_LABELS, HAND_PROBS[:, 0], "2-D"),
  ],
)
def test_bad_inputs_raise_clear_errors(labels, probs, match):
  with pytest.raises(ValueError, match=match):
    pur.find_label_issues(labels, probs)


def test_table_and_method_argument_errors():
  with pytest.raises(ValueError, match="paths has 11"):
    pur.purification_table(HAND_PATHS[:-1], HAND_LABELS, HAND_PROBS, CLASSES)
  with pytest.raises(ValueError, match="class_names has 2"):
    pur.purification_table(HAND_PATHS, HAND_LABELS, HAND_PROBS, CLASSES[:2])
  with pytest.raises(ValueError, match="num_models"):
    pur.purification_table(HAND_PATHS, HAND_LABELS, HAND_PROBS, CLASSES, num_models=0)
  with pytest.raises(ValueError, match="unknown method"):
    pur.find_label_issues(HAND_LABELS, HAND_PROBS, method="venn_data")
  with pytest.raises(ValueError, match="one entry per example"):
    pur.rank_label_issues(HAND_LABELS, HAND_PROBS, mask=[True, False])
  with pytest.raises(ValueError, match="unknown rank_by"):
    pur.label_quality_scores(HAND_LABELS, HAND_PROBS, "entropy")


def test_purified_indices_by_index_and_path():
  result = pur.purified_indices(np.array([7, 3, 5, 1]), [3, 9, 3])
  assert result.kept.tolist() == [7, 5, 1] and result.removed.tolist() == [3] and result.num_flagged_elsewhere == 1
  paths = [f"img{i}.png" for i in range(10)]
  result = pur.purified_indices([7, 3, 5, 1], ["img5.png", "img1.png"], paths=paths)
  assert result.kept.tolist() == [7, 3] and result.removed.tolist() == [5, 1] and result.num_flagged_elsewhere == 0
  with pytest.raises(ValueError, match="not in the dataset"):
    pur.purified_indices([1, 2], ["other.png"], paths=paths)
  with pytest.raises(ValueError, match="give paths="):
    pur.purified_indices([1, 2], ["img1.png"])
  with pytest.raises(ValueError, match="integer dataset indices"):
    pur.purified_indices([1.5, 2.0], [1])


def _write_predictions(path, rows):
  fields = ["arm", "lane", "seed", "repeat", "fold", "n_per_class", "path", "target", "prediction", "confidence"]
  fields += [f"p_{c}" for c in ("a", "b")]
  with open(path, "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=fields)
    writer.writeheader()
    for arm, lane, n, image, target, pa in rows:
      writer.writerow(
        dict(arm=arm, lane=lane, seed=0, repeat=lane, fold=0, n_per_class=n, path=image, target=target, prediction="",
             confidence="", p_a=f"{pa:.6f}", p_b=f"{1 - pa:.6f}")
      )  # fmt: skip


def test_read_oof_predictions_averages_per_image_within_one_arm(tmp_path):
  path = tmp_path / "predictions_test.csv"
  _write_predictions(
    path,
    [
      ("scratch", 0, "", "x.png", "a", 0.9),
      ("scratch", 1, "", "x.png", "a", 0.7),
      ("scratch", 0, "", "y.png", "b", 0.2),
      ("imagenet", 2, "", "x.png", "a", 0.1),
    ],
  )
  with pytest.raises(ValueError, match="several arm values"):
    workdir_predictions.read_oof_predictions(path)
  oof = workdir_predictions.read_oof_predictions(path, arm="scratch", n_per_class=None)
  assert oof.paths == ["x.png", "y.png"] and oof.class_names == ["a", "b"]
  np.testing.assert_array_equal(oof.labels, [0, 1])
  np.testing.assert_array_equal(oof.num_models, [2, 1])
  np.testing.assert_allclose(oof.probs, [[0.8, 0.2], [0.2, 0.8]])
  with pytest.raises(ValueError, match="no rows with n_per_class='5'"):
    workdir_predictions.read_oof_predictions(path, arm="scratch", n_per_class=5)
