"""analyze_study and write_report on a small fake study folder written with the study's own CSV writers."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxcell import config as config_lib
from jaxcell.analysis import calibration, ensembles
from jaxcell.analysis.triage import HIGH, LOW
from jaxcell.evaluation import metrics as metrics_lib
from jaxcell.reporting import plots, report_html, analysis_files, summary
from jaxcell.reporting import screenshot, triage_images
from jaxcell.workdir import confusion, predictions
from jaxcell.workdir import results as results_table

CLASSES = ("alpha", "beta", "gamma")
IMAGES_PER_CLASS = 10
HOLDOUT_PER_CLASS = 3
MISLABELLED = "synthetic/alpha/00005"  # Labelled alpha, but every model sees a clear beta.
STRENGTH = {"scratch": 1.8, "tuned<script>": 2.8, "main": 2.0, "main_lsr": 1.2, "solo": 2.0}


def fake_images():
  """Paths, labels and a uint8 picture per image; the first HOLDOUT_PER_CLASS of each class are the holdout."""
  rng = np.random.default_rng(0)
  paths, labels, pictures = [], [], {}
  for c, name in enumerate(CLASSES):
    for i in range(IMAGES_PER_CLASS):
      path = f"synthetic/{name}/{i:05d}"  # Synthetic ids: no file on disk, as with data.source='synthetic'.
      paths.append(path)
      labels.append(c)
      pictures[path] = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
  return paths, np.array(labels), pictures


SHARED_NOISE = np.random.default_rng(1).normal(size=(len(CLASSES) * IMAGES_PER_CLASS, len(CLASSES)))


def model_probs(rng, labels, paths, strength):
  """Softmax of (strength x one-hot of the true class + noise); the mislabelled image looks like a beta.

  Part of the noise belongs to the image (shared by every model), so models make correlated mistakes that an
  ensemble cannot average away, as real ones do.
  """
  logits = SHARED_NOISE + 0.7 * rng.normal(size=(labels.size, len(CLASSES)))
  logits[np.arange(labels.size), labels] += strength
  bad = paths.index(MISLABELLED)
  logits[bad] = rng.normal(scale=0.2, size=len(CLASSES))
  logits[bad, 1] += 5.0
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def write_study(workdir, arms, *, with_test=True):
  """A finished study's folder: 2 folds x 2 repeats per arm; returns the picture of every path."""
  os.makedirs(workdir, exist_ok=True)
  paths, labels, pictures = fake_images()
  holdout = np.array([i for i in range(labels.size) if i % IMAGES_PER_CLASS < HOLDOUT_PER_CLASS])
  pool = np.setdiff1d(np.arange(labels.size), holdout)
  rows = []
  for a, arm in enumerate(arms):
    rng = np.random.default_rng(100 + a)
    for repeat in range(2):
      folds = np.arange(pool.size) % 2 if repeat == 0 else (np.arange(pool.size) + 1) % 2
      for fold in range(2):
        lane = (0 if arm.endswith("_lsr") else a) * 4 + repeat * 2 + fold
        fields = {"arm": arm, "lane": lane, "seed": 0, "repeat": repeat, "fold": fold, "n_per_class": None}
        probs = model_probs(rng, labels, paths, STRENGTH[arm])
        splits = [("holdout", holdout)] + ([("test", pool[folds == fold])] if with_test else [])
        for split, idx in splits:
          row = dict(fields, split=split, num_images=int(idx.size))
          row.update(metrics_lib.classification_metrics(labels[idx], probs[idx], CLASSES))
          rows.append(row)
          matrix = metrics_lib.confusion_matrix(labels[idx], probs[idx].argmax(axis=1), len(CLASSES))
          confusion.append_confusion(os.path.join(workdir, "confusion_matrices.csv"), fields, split, matrix, CLASSES)
          predictions.append_predictions(
            os.path.join(workdir, f"predictions_{split}.csv"),
            predictions.prediction_rows(fields, [paths[i] for i in idx], labels[idx], probs[idx], CLASSES),
          )
  results_table.append_rows(os.path.join(workdir, "results.csv"), rows)
  setup = ["Dataset: fake cells, 30 images, 3 classes.", f"Arms: {', '.join(arms)}."]
  summary.write_summary_markdown(
    os.path.join(workdir, "summary.md"), rows, title="jaxcell study summary", setup_lines=setup, num_resamples=100
  )
  plots.plot_boxplots(rows, "balanced_accuracy", os.path.join(workdir, "boxplot.png"), num_classes=len(CLASSES))
  study = {"class_names": list(CLASSES), "image_shape": [12, 12, 3], "arms": {a: {} for a in arms}}
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump(study, f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.base_config().to_json_best_effort(indent=2, sort_keys=True))
  return pictures


def make_config(triage_folders=True):
  c = config_lib.base_config()
  c.eval.triage_thresholds = (0.6, 0.75)
  c.eval.bootstrap_resamples = 300
  c.output.triage_folders = triage_folders
  return c


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("study")
  pictures = write_study(workdir, ("scratch", "tuned<script>"))
  config = make_config()
  analysis = analysis_files.analyze_study(workdir, config, image_lookup=pictures.__getitem__)
  report = report_html.write_report(workdir, analysis, config, image_lookup=pictures.__getitem__)
  return workdir, analysis, pictures, report


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_every_output_file_is_written(study):
  workdir, analysis, _, report = study
  for name in analysis_files.FILES.values():
    assert (workdir / name).exists(), name
  assert report == str(workdir / "report.html")
  assert json.loads((workdir / "analysis.json").read_text()) == analysis
  assert [s["section"] for s in analysis["skipped"]] == []  # nothing to skip in a complete two-arm study
  assert analysis["arms"] == ["scratch", "tuned<script>"] and analysis["primary_arm"] == "scratch"


def test_ensembles_csv_matches_ensemble_metrics(study):
  workdir, _, _, _ = study
  rows = read_csv(workdir / "ensembles.csv")
  assert [r["arm"] for r in rows] == ["scratch", "tuned<script>"]
  table = predictions.load_prediction_table(str(workdir / "predictions_holdout.csv"), n_per_class=None)
  for row in rows:
    preds = table[row["arm"]]
    expected = ensembles.ensemble_metrics(preds.targets, preds.probs, CLASSES, include_leaky=True)
    assert row["num_models"] == "4" and row["num_images"] == str(len(CLASSES) * HOLDOUT_PER_CLASS)
    for key in ("mean_prob/balanced_accuracy", "majority_vote/accuracy", "member_mean/nll"):
      assert float(row[key]) == pytest.approx(expected[key], abs=1e-6)
    assert float(row[analysis_files.LEAKY_COLUMN]) == pytest.approx(expected[analysis_files.LEAKY_KEY], abs=1e-6)
    assert analysis_files.LEAKY_KEY not in row  # only under the compatibility name


def test_triage_csv_buckets_follow_the_threshold(study):
  workdir, analysis, _, _ = study
  rows = read_csv(workdir / "triage.csv")
  threshold = analysis["triage_csv"]["threshold"]
  assert threshold == 0.6 and {r["arm"] for r in rows} == {"scratch", "tuned<script>"}
  assert {r["bucket"] for r in rows} == {HIGH, LOW}  # both buckets occur, so the check below means something
  for row in rows:
    assert float(row["threshold"]) == threshold
    assert row["bucket"] == (HIGH if float(row["confidence"]) >= threshold else LOW)
  for arm, info in analysis["triage"].items():
    kept = sum(r["bucket"] == HIGH for r in rows if r["arm"] == arm)
    assert info["at_thresholds"][0]["num_kept"] == kept
    assert [t["threshold"] for t in info["at_thresholds"]] == [0.6, 0.75]
    assert info["interval"]["num_models"] == 4 and 0 <= info["aurc"] <= 1


def test_triage_folders_are_drawn_from_image_lookup(study):
  workdir, analysis, pictures, _ = study
  rows = [r for r in read_csv(workdir / "triage.csv") if r["arm"] == "scratch"]
  assert analysis["triage_folders"]["written_from_lookup"] == len(rows)
  assert analysis["triage_folders"]["copied"] == 0 and analysis["triage_folders"]["failed"] == []
  for bucket in (HIGH, LOW):
    files = sorted((workdir / "triage" / bucket).glob("*.png"))
    assert len(files) == sum(r["bucket"] == bucket for r in rows)
  row = rows[0]
  (found,) = (workdir / "triage" / row["bucket"]).glob(f"*{row['path'].replace('/', '_')}.png")
  assert found.name.startswith(f"target-{row['target']}__pred-{row['prediction']}__")
  np.testing.assert_array_equal(np.asarray(Image.open(found)), pictures[row["path"]])


def test_calibration_is_the_ece_of_the_holdout_ensemble_and_oof_temperature(study):
  workdir, analysis, _, _ = study
  holdout = predictions.load_prediction_table(str(workdir / "predictions_holdout.csv"))
  test = predictions.load_prediction_table(str(workdir / "predictions_test.csv"))
  assert set(analysis["calibration"]) == {"scratch", "tuned<script>"}
  for arm, info in analysis["calibration"].items():
    ensemble = ensembles.mean_probability(holdout[arm].probs)
    assert 0.0 <= info["ece"] <= 1.0 and 0.0 <= info["ece_after_temperature"] <= 1.0
    assert info["ece"] == pytest.approx(calibration.expected_calibration_error(holdout[arm].targets, ensemble, 15))
    oof, _ = ensembles.out_of_fold_probs(test[arm])
    temperature = calibration.fit_temperature(calibration.log_probs(oof), test[arm].targets)
    assert info["temperature"] == pytest.approx(temperature)
    scaled = calibration.apply_temperature(ensemble, temperature)
    expected = calibration.expected_calibration_error(holdout[arm].targets, scaled, 15)
    assert info["ece_after_temperature"] == pytest.approx(expected)


def test_purification_flags_the_mislabelled_image(study):
  workdir, analysis, _, _ = study
  rows = read_csv(workdir / "purification.csv")
  flagged = {r["path"]: r for r in rows}
  assert MISLABELLED in flagged
  assert flagged[MISLABELLED]["given_label"] == "alpha" and flagged[MISLABELLED]["suggested_label"] == "beta"
  info = analysis["purification"]
  assert info["arm"] == "scratch" and info["num_flagged"] == len(rows) and info["num_images"] == 21


def test_comparisons_mention_both_arms(study):
  workdir, analysis, _, _ = study
  text = (workdir / "comparisons.md").read_text()
  assert "scratch" in text and "tuned<script>" in text
  assert {(r["arm_a"], r["arm_b"], r["split"]) for r in analysis["comparisons"]["results"]} == {
    ("scratch", "tuned<script>", "test"),
    ("scratch", "tuned<script>", "holdout"),
  }


def test_report_has_every_section_embedded_images_and_no_script(study):
  workdir, analysis, _, report = study
  text = open(report, encoding="utf-8").read()
  for title in report_html.SECTIONS.values():
    assert f">{report_html.esc(title)}</h2>" in text, title
  assert "<script" not in text.lower()
  assert "tuned&lt;script&gt;" in text  # the arm name is shown, escaped
  assert "http://" not in text and "https://" not in text and "<link" not in text  # nothing fetched from outside
  # boxplot, risk-coverage, reliability, and thumbnails of both triage buckets
  assert text.count('src="data:image/png;base64,') >= 3 + 2
  assert "(no image)" not in text
  for sentence in (r["sentence"] for r in analysis["comparisons"]["results"]):
    assert report_html.esc(sentence) in text
  assert report_html.esc(MISLABELLED) in text


def test_missing_pieces_are_skipped_with_reasons(tmp_path):
  workdir = tmp_path / "probe"
  write_study(workdir, ("main", "main_lsr"), with_test=False)
  analysis = analysis_files.analyze_study(workdir, make_config(triage_folders=False))
  reasons = {s["section"]: s["reason"] for s in analysis["skipped"]}
  assert "linear probe" in reasons["calibration of main_lsr"]
  assert "out-of-fold" in reasons["temperature scaling of main"] and "CV test" in reasons["purification"]
  assert "triage_folders" in reasons["triage folders"] and not (workdir / "triage").exists()
  assert set(analysis["calibration"]) == {"main"} and "main_lsr" in analysis["triage"]
  assert [r["split"] for r in analysis["comparisons"]["results"]] == ["holdout"]
  text = open(report_html.write_report(workdir, analysis, make_config()), encoding="utf-8").read()
  assert report_html.esc(reasons["calibration of main_lsr"]) in text


def test_single_arm_skips_comparisons(tmp_path):
  write_study(tmp_path, ("solo",))
  analysis = analysis_files.analyze_study(tmp_path, make_config(triage_folders=False))
  assert "single arm" in {s["section"]: s["reason"] for s in analysis["skipped"]}["comparisons"]
  assert not (tmp_path / "comparisons.md").exists()


def test_bad_inputs_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="no results.csv"):
    analysis_files.analyze_study(tmp_path, make_config())
  (tmp_path / "results.csv").write_text("")
  config = make_config()
  config.eval.triage_thresholds = ()
  with pytest.raises(ValueError, match="eval.triage_thresholds"):
    analysis_files.analyze_study(tmp_path, config)
  config = make_config()
  config.purify.method = "venn_data"
  with pytest.raises(ValueError, match="purify.method"):
    analysis_files.analyze_study(tmp_path, config)
  with pytest.raises(ValueError, match="uint8"):
    triage_images.as_uint8_image(np.zeros((4, 4, 3), np.float32), "x")


def test_report_renders_in_a_headless_browser(study, tmp_path):
  if screenshot.find_browser() is None:
    pytest.skip(
      "no headless browser on PATH (looked for chromium, google-chrome); pip's playwright would need to download "
      "its own browser, which is not possible offline. `apt-get install chromium` enables this test."
    )
  _, _, _, report = study
  png = screenshot.screenshot(report, tmp_path / "report.png", width=1200, height=2000)
  pixels = np.asarray(Image.open(png).convert("L"), np.float64)
  assert pixels.shape == (2000, 1200) and pixels.std() > 10  # something was drawn, not a blank page
