"""report.html: a finished study on one self-contained page that a biologist can read without code.

`write_report(workdir, analysis, config)` turns the study's files (summary.md, results.csv, boxplot.png,
learning_curve_*.png, confusion_matrices.csv) and `analysis_files.analyze_study`'s outputs (triage, calibration,
comparisons, purification) into sections with a short "What this means" under each. Figures and example images
are embedded as base64 PNG data URIs and the style sheet is inline, so the file can be mailed or archived alone;
there is no JavaScript. The page's building blocks are in html_blocks.py, which escapes every piece of text from
the study (arm, class and file names).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from jaxcell.data import loading
from jaxcell.analysis import triage
from jaxcell.reporting import analysis_files, summary, triage_images
from jaxcell.reporting.html_blocks import (
  THUMBNAIL_PX,
  bullets,
  esc,
  figure_html,
  number,
  page_html,
  paragraph,
  percent,
  section_html,
  table_html,
  thumbnail_uri,
)
from jaxcell.workdir import confusion, layout, results, storage

log = logging.getLogger(__name__)

REPORT_NAME = layout.REPORT
SECTIONS = {
  "setup": "Question and set-up",
  "scores": "Scores of the single models",
  "learning": "Learning curves",
  "ensembles": "Ensembles: combining each arm's models",
  "triage": "Confidence triage: which predictions to trust",
  "calibration": "Calibration: does 90 % confident mean 90 % correct?",
  "confusion": "Confusion matrices",
  "comparisons": "Comparisons between arms",
  "examples": "Example images per triage bucket",
  "purification": "Images that may be mislabelled",
  "skipped": "Analyses not done",
}
EXAMPLES_PER_BUCKET = 6
PURIFICATION_ROWS_SHOWN = 15


def _section(key: str, meaning: str, body: str) -> str:
  return section_html(key, SECTIONS[key], meaning, body)


def _skips(analysis: dict, prefix: str) -> str:
  """Paragraphs giving the reasons of the skipped analyses whose section name starts with prefix."""
  return "".join(
    paragraph(f"Not done — {s['section']}: {s['reason']}.", "note")
    for s in analysis.get("skipped", [])
    if s["section"].startswith(prefix)
  )


def _evaluation_name(analysis: dict) -> str:
  return analysis.get("evaluation_set", {}).get("name", "global holdout")


def _evaluation_note(analysis: dict) -> str:
  """Says which images stand in for the global holdout when the study has none (a given test/ folder)."""
  if analysis.get("evaluation_set", {}).get("split", "holdout") == "holdout":
    return ""
  return paragraph(
    f"Evaluated on the {_evaluation_name(analysis)}: every model was scored on the same images, which take the "
    "place of the global holdout in this section.",
    "note",
  )


# --- sections -----------------------------------------------------------------------------------


def setup_lines(workdir, config, analysis: dict) -> list[str]:
  """The set-up bullet lines of summary.md, or lines built from config.json / study.json when it has none."""
  path = workdir / layout.SUMMARY
  if path.is_file():
    lines, started = [], False
    for line in storage.read_text(path).splitlines():
      if line.startswith("## "):
        break
      started = started or line.startswith("# ")
      if started and line.startswith("- "):
        lines.append(line[2:])
    if lines:
      return lines
  c = config
  source = loading.source_text(c.data)
  classes = ", ".join(analysis.get("class_names", [])) or "unknown"
  return [
    f"Dataset: {source}; classes: {classes}; images resized to {c.data.image_size} px.",
    f"Protocol: global holdout {c.protocol.holdout_fraction:.0%} per class; {c.protocol.num_folds} folds x "
    f"{c.protocol.num_repeats} repeats x {c.protocol.num_seeds} seeds.",
    f"Arms: {', '.join(analysis.get('arms', [])) or 'main'}.",
  ]


SHORT_ANSWERS = 4


def short_answers(analysis: dict) -> list[str]:
  """The paired comparisons on the shared evaluation set (holdout or given test set), in words: the study's answer
  on its first screen."""
  results = analysis.get("comparisons", {}).get("results", [])
  split = analysis.get("evaluation_set", {}).get("split", "holdout")
  return [r["sentence"] for r in results if r["split"] == split][:SHORT_ANSWERS]


def setup_section(workdir, config, analysis: dict) -> str:
  arms = analysis.get("arms", [])
  body = paragraph(
    "The question: which way of training an image classifier (each way is an 'arm' of the study) works best on "
    "these images, how sure can we be of that, how far can a single prediction be trusted, and which images "
    f"deserve a second look? Arms compared: {', '.join(arms) or 'one'}."
  )
  answers = short_answers(analysis)
  if answers:
    body += "<h3>The answer, in short</h3>" + bullets(answers)
    body += paragraph("Details, and the CV test folds, under 'Comparisons between arms'.", "note")
  body += bullets(setup_lines(workdir, config, analysis))
  examples = workdir / layout.PREPROCESS_EXAMPLES
  if examples.is_file():
    body += "<h3>Pre-processing variants</h3>" + paragraph(
      "The same holdout image of each class as each pre-processing arm trained on it (rows: variants)."
    )
    body += figure_html(examples, "one example image per class under each pre-processing variant")
  return _section(
    "setup",
    "Every arm trains many models (seeds x repeats x folds) on the same splits of the same images. The 'CV test "
    "folds' score each model on images it did not train on; the 'global holdout' is a set of images that no "
    "model ever trained on, shared by all models. Arms ending in '_lsr' are closed-form linear probes on frozen "
    "features, scored alongside the trained heads.",
    body,
  )


def scores_section(workdir, config) -> str:
  metric = config.eval.box_metric
  body = figure_html(workdir / layout.BOXPLOT, f"{metric} per model, per arm and split")
  rows = results.usable(results.read_rows(workdir / layout.RESULTS))
  if rows and metric in rows[0]:
    stats = summary.summarize(rows, [metric], num_resamples=int(config.eval.bootstrap_resamples), seed=int(config.seed))
    body += table_html(
      ["arm", "split", "training images per class", "models", f"mean {metric}", "95 % CI of the mean", "min–max"],
      [
        [s["arm"], summary.SPLIT_TITLES.get(s["split"], s["split"]), layout.size_text(s["n_per_class"]), s["n"]]
        + [number(s["mean"]), f"{number(s['ci_low'])} to {number(s['ci_high'])}"]
        + [f"{number(s['min'])} to {number(s['max'])}"]
        for s in stats
      ],
    )
  return _section(
    "scores",
    f"Each dot is one trained model's {metric.replace('_', ' ')}; a box spans the middle half of the models. "
    "A tall box means the result depends a lot on which images a model happened to train on. The dashed line is "
    "what guessing at random would score.",
    body,
  )


def learning_section(workdir) -> str:
  paths = sorted(workdir.glob("learning_curve_*.png"))
  if paths:
    body = "".join(figure_html(p, p.stem.replace("_", " ")) for p in paths)
  else:
    body = paragraph("Not drawn: the study trained on a single training-set size.", "note")
  return _section(
    "learning",
    "How the score grows with the number of training images per class. A curve still rising at its right end "
    "means more labelled images would probably help; a flat curve means they would not.",
    body,
  )


def ensembles_section(analysis: dict, config) -> str:
  rows = analysis.get("ensembles", [])
  shared = ("accuracy", "balanced_accuracy", "bionic_weighted_accuracy", "macro_f1")  # in every ensemble column
  metric = config.eval.compare_metric if config.eval.compare_metric in shared else "balanced_accuracy"
  body = _evaluation_note(analysis) + _skips(analysis, "ensembles")
  columns = [
    ("arm", "arm"),
    ("training images per class", "n_per_class"),
    ("models", "num_models"),
    (f"{_evaluation_name(analysis)} images", "num_images"),
    (f"average single model ({metric})", f"member_mean/{metric}"),
    (f"mean-probability ensemble ({metric})", f"mean_prob/{metric}"),
    (f"majority vote ({metric})", f"majority_vote/{metric}"),
    ("mean-probability ensemble (accuracy)", "mean_prob/accuracy"),
    ("BioNIC leaky vote (compatibility only; weighted accuracy)", analysis_files.LEAKY_COLUMN),
  ]
  if rows:
    cell = lambda value: number(value) if isinstance(value, float) or value is None else value  # noqa: E731
    body += table_html([h for h, _ in columns], [[cell(r.get(key)) for _, key in columns] for r in rows])
  return _section(
    "ensembles",
    "Averaging the predicted probabilities of all of an arm's models (mean-probability ensemble) or letting them "
    "vote usually beats a typical single model on the holdout. The last column reproduces BioNIC's published "
    "voting score, which counts the true label as one of the votes: it is optimistic and is shown only to compare "
    "with BioNIC's numbers, never as a result.",
    body,
  )


def _target_sentence(arm: str, info: dict) -> str:
  found, spread = info["for_accuracy"], info["interval"]
  goal = percent(spread["target_accuracy"])
  if found["threshold"] is None:
    head = f"{arm}: the ensemble cannot reach {goal} accuracy on any subset of confident images ({found['reason']})."
  else:
    head = (
      f"{arm}: to be right {goal} of the time, trust the ensemble only when its confidence is at least "
      f"{number(found['threshold'])}; that keeps {percent(found['coverage'])} of the holdout images."
    )
  low, high = spread["coverage_interval"]
  return head + (
    f" Single models would keep between {percent(low)} and {percent(high)} (95 % range over "
    f"{spread['num_models']} models; {spread['num_unreachable']} cannot reach it at all)."
  )


def triage_section(analysis: dict) -> str:
  body = _evaluation_note(analysis) + _skips(analysis, "triage")
  rows, sentences = [], []
  for arm, info in analysis.get("triage", {}).items():
    for t in info["at_thresholds"]:
      kept = f"{t['num_kept']} of {t['num_images']} ({percent(t['coverage'])})"
      row = [number(t["threshold"], 2), kept, percent(t["accuracy_kept"]), percent(t["accuracy_deferred"])]
      rows.append([arm, *row, number(info["aurc"])])
    sentences.append(_target_sentence(arm, info))
  if rows:
    body += figure_html(analysis["files"].get("risk_coverage_png"), "risk-coverage curves")
    body += table_html(
      ["arm (ensemble)", "threshold", "images trusted", "accuracy of trusted", "accuracy of deferred", "AURC"], rows
    )
    body += bullets(sentences)
  folders = analysis.get("triage_folders")
  if folders:
    body += paragraph(
      f"Images of {analysis['triage_csv']['folders_arm']} sorted into {folders['directory']}/high_confidence and "
      f"/low_confidence: {folders['copied']} copied, {folders['written_from_lookup']} drawn from the dataset, "
      f"{len(folders['failed'])} failed.",
      "note",
    )
  return _section(
    "triage",
    "Trusting only confident predictions and sending the rest to a person trades coverage (how many images are "
    "handled automatically) for accuracy. Read the curve from left to right: the error rate among the trusted "
    "images as more and more of them are trusted. triage.csv lists every holdout image with its bucket.",
    body,
  )


def calibration_section(analysis: dict) -> str:
  body = _evaluation_note(analysis) + _skips(analysis, "calibration") + _skips(analysis, "temperature")
  items = analysis.get("calibration", {})
  if items:
    body += figure_html(analysis["files"].get("reliability_png"), "reliability diagram")
    body += table_html(
      [
        "arm (ensemble)",
        f"ECE on {_evaluation_name(analysis)}",
        "temperature (fitted on CV test folds)",
        "ECE after temperature",
      ],
      [
        [arm, number(c["ece"]), number(c.get("temperature"), 2), number(c.get("ece_after_temperature"))]
        for arm, c in items.items()
      ],
    )
    body += "".join(
      paragraph(f"{arm}: {w}", "note") for arm, c in items.items() for w in c.get("temperature_warnings", [])
    )
  return _section(
    "calibration",
    "A calibrated model that says '90 % sure' is right 90 % of the time: its points lie on the diagonal. The "
    "expected calibration error (ECE) is the average gap, 0 being perfect. A temperature above 1 means the models "
    "were over-confident; it is fitted on out-of-fold predictions only, then checked on the untouched holdout.",
    body,
  )


def confusion_section(workdir, class_names: Sequence[str]) -> str:
  path = workdir / layout.CONFUSION
  body = ""
  if not path.is_file() or not class_names:
    body = paragraph("Not available: the study wrote no confusion_matrices.csv.", "note")
  else:
    sums = confusion.summed_confusion(path, class_names)
    arm_order = {arm: k for k, (arm, _) in enumerate(sums)}  # first appearance; CV test folds before holdout
    order = sorted(sums, key=lambda key: (arm_order[key[0]], key[1] != results.CV_TEST_SPLIT, key[1]))
    for arm, split in order:
      m = sums[(arm, split)]
      with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(m) / m.sum(axis=1)
      body += f"<h3>{esc(arm)} — {esc(summary.SPLIT_TITLES.get(split, split))}</h3>"
      body += table_html(
        ["true \\ predicted", *class_names, "recall"],
        [[name, *m[i].tolist(), percent(float(recall[i]))] for i, name in enumerate(class_names)],
        cell_class=lambda i, j: "diag" if j == i + 1 else None,
      )
  return _section(
    "confusion",
    "Counts summed over all models of an arm: rows are the true classes, columns what the models predicted. The "
    "shaded diagonal holds the correct predictions; a large off-diagonal count shows two classes being confused.",
    body,
  )


def comparisons_section(analysis: dict) -> str:
  info = analysis.get("comparisons")
  body = _skips(analysis, "comparisons")
  if info:
    body += bullets([r["sentence"] for r in info["results"]])
    body += paragraph(
      "Pairs are models with the same seed, repeat, fold and training-set size in both arms. Models of one study "
      "share training images, so intervals and p-values are somewhat optimistic and are not adjusted for the "
      "number of comparisons. The full table is in comparisons.md.",
      "note",
    )
  return _section(
    "comparisons",
    "Each arm is compared with the first one model by model, on models trained on exactly the same images, so "
    "the difference is due to the arm and not to a lucky split. 'Helps' or 'hurts' is said only when the 95 % "
    "interval of the mean difference excludes zero.",
    body,
  )


def examples_section(analysis: dict, config, image_lookup) -> str:
  path = analysis["files"].get("triage_csv")
  body = _evaluation_note(analysis)
  if not (path and storage.as_path(path).is_file()):
    body += paragraph("Not available: no triage.csv was written (see 'Analyses not done').", "note")
  else:
    arm = analysis["triage_csv"]["folders_arm"]
    rows = [r for r in storage.read_csv(path) if r["arm"] == arm]
    body += paragraph(f"Arm {arm}, ensemble, threshold {number(analysis['triage_csv']['threshold'], 2)}.", "note")
    for bucket, title in ((triage.HIGH, "Trusted (high confidence)"), (triage.LOW, "Deferred (low confidence)")):
      figures = []
      for r in triage_images.pick_examples(rows, bucket, EXAMPLES_PER_BUCKET):
        array = triage_images.load_image(r["path"], config, image_lookup, THUMBNAIL_PX)
        picture = f'<img alt="{esc(r["path"])}" src="{thumbnail_uri(array)}">' if array is not None else "(no image)"
        verdict = "" if r["target"] == r["prediction"] else ' <span class="wrong">(wrong)</span>'
        figures.append(
          f"<figure>{picture}<figcaption>true: {esc(r['target'])}<br>predicted: {esc(r['prediction'])}{verdict}"
          f"<br>confidence {esc(number(float(r['confidence']), 2))}<br><small>{esc(r['path'])}</small></figcaption>"
          "</figure>"
        )
      body += f"<h3>{esc(title)}</h3>" + (
        f'<div class="thumbs">{"".join(figures)}</div>' if figures else paragraph("No image in this bucket.", "note")
      )
  return _section(
    "examples",
    "A few holdout images from each bucket, with the true class, the ensemble's prediction and its confidence. "
    "Trusted images that are wrong are shown first: they are the mistakes triage would not catch.",
    body,
  )


def purification_section(analysis: dict) -> str:
  info = analysis.get("purification")
  body = _skips(analysis, "purification")
  if info:
    body += paragraph(
      f"{info['num_flagged']} of {info['num_images']} images flagged ({info['num_likely_mislabelled']} likely "
      f"mislabelled) by {info['method']} on the out-of-fold predictions of arm {info['arm']} "
      f"({info['n_per_class']} training images per class). All flagged images are in purification.csv.",
    )
    body += table_html(
      ["rank", "image", "given label", "suggested label", "p(given)", "p(suggested)", "kind"],
      [
        [
          r["rank"],
          r["path"],
          r["given_label"],
          r["suggested_label"],
          number(r["p_given"]),
          number(r["p_suggested"]),
          r["kind"].replace("_", " "),
        ]
        for r in info["top"][:PURIFICATION_ROWS_SHOWN]
      ],
    )
  return _section(
    "purification",
    "Each image was predicted by models that never trained on it. Where they confidently agree on another class "
    "than the given label, the label may be wrong; 'ambiguous' means two classes are close. These are candidates "
    "for an expert to re-check, not corrections.",
    body,
  )


def skipped_section(analysis: dict) -> str:
  items = analysis.get("skipped", [])
  body = bullets([f"{s['section']}: {s['reason']}" for s in items]) if items else paragraph("Every analysis was done.")
  return _section("skipped", "These parts could not be computed for this study, each with its reason.", body)


def write_report(workdir: str | os.PathLike, analysis: dict, config, image_lookup=None) -> str:
  """Writes workdir/report.html from the study's files and `analyze_study`'s result; returns its path."""
  workdir = storage.as_path(workdir)
  if not (workdir / layout.RESULTS).is_file():
    raise ValueError(f"{workdir} has no results.csv: pass the workdir of a finished study.")
  class_names = analysis.get("class_names", [])
  parts = [
    setup_section(workdir, config, analysis),
    scores_section(workdir, config),
    learning_section(workdir),
    ensembles_section(analysis, config),
    triage_section(analysis),
    calibration_section(analysis),
    confusion_section(workdir, class_names),
    comparisons_section(analysis),
    examples_section(analysis, config, image_lookup),
    purification_section(analysis),
    skipped_section(analysis),
  ]
  page = page_html(
    "jaxcell study report", str(workdir.resolve() if storage.is_local(workdir) else workdir), SECTIONS, parts
  )
  path = workdir / REPORT_NAME
  storage.write_text(path, page)
  return str(path)
