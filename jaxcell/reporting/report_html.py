"""report.html: a finished study on one self-contained page that a biologist can read without code.

`write_report(workdir, analysis, config)` turns the study's files (summary.md, results.csv, boxplot.png,
learning_curve_*.png, confusion_matrices.csv) and `study_analysis.analyze_study`'s outputs (triage, calibration,
comparisons, purification) into sections with a short "What this means" under each. Figures and example images
are embedded as base64 PNG data URIs and the style sheet is inline, so the file can be mailed or archived alone;
there is no JavaScript. Every piece of text from the study (arm, class and file names) goes through html.escape.
"""

from __future__ import annotations

import base64
import collections
import csv
import html
import io
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from jaxcell.analysis import triage
from jaxcell.reporting import results_table, study_analysis, summary

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
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
THUMBNAIL_PX = 96
_NUMERIC = re.compile(r"^([-+]?[0-9.]+( %)?|n/a|[0-9.]+ to [0-9.]+|[0-9]+ of [0-9]+ \([0-9]+ %\))$")
EXAMPLES_PER_BUCKET = 6
PURIFICATION_ROWS_SHOWN = 15
_STYLE = """
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


# --- HTML building blocks (every argument is plain text, escaped here) ---------------------------


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


def figure_html(path: Path | str | None, alt: str) -> str:
  """An embedded PNG figure, or a note saying it is missing."""
  if not path or not Path(path).is_file():
    return f'<p class="note">(figure not available: {esc(Path(path).name if path else alt)})</p>'
  return f'<img class="figure" alt="{esc(alt)}" src="{png_data_uri(Path(path).read_bytes())}">'


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


def section_html(key: str, meaning: str, body: str) -> str:
  """A section: heading, the body, then a plain-words 'What this means' box."""
  return (
    f'<section id="{esc(key)}"><h2>{esc(SECTIONS[key])}</h2>{body}'
    f'<div class="what"><strong>What this means.</strong> {esc(meaning)}</div></section>'
  )


def _skips(analysis: dict, prefix: str) -> str:
  """Paragraphs giving the reasons of the skipped analyses whose section name starts with prefix."""
  return "".join(
    paragraph(f"Not done — {s['section']}: {s['reason']}.", "note")
    for s in analysis.get("skipped", [])
    if s["section"].startswith(prefix)
  )


# --- sections -----------------------------------------------------------------------------------


def setup_lines(workdir: Path, config, analysis: dict) -> list[str]:
  """The set-up bullet lines of summary.md, or lines built from config.json / study.json when it has none."""
  path = workdir / "summary.md"
  if path.is_file():
    lines, started = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
      if line.startswith("## "):
        break
      started = started or line.startswith("# ")
      if started and line.startswith("- "):
        lines.append(line[2:])
    if lines:
      return lines
  c = config
  source = c.data.root if c.data.source == "folder" else f"synthetic cells (seed {c.data.synthetic.seed})"
  classes = ", ".join(analysis.get("class_names", [])) or "unknown"
  return [
    f"Dataset: {source}; classes: {classes}; images resized to {c.data.image_size} px.",
    f"Protocol: global holdout {c.protocol.holdout_fraction:.0%} per class; {c.protocol.num_folds} folds x "
    f"{c.protocol.num_repeats} repeats x {c.protocol.num_seeds} seeds.",
    f"Arms: {', '.join(analysis.get('arms', [])) or 'main'}.",
  ]


def setup_section(workdir: Path, config, analysis: dict) -> str:
  arms = analysis.get("arms", [])
  body = paragraph(
    "The question: which way of training an image classifier (each way is an 'arm' of the study) works best on "
    "these images, how sure can we be of that, how far can a single prediction be trusted, and which images "
    f"deserve a second look? Arms compared: {', '.join(arms) or 'one'}."
  )
  body += "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in setup_lines(workdir, config, analysis)) + "</ul>"
  return section_html(
    "setup",
    "Every arm trains many models (seeds x repeats x folds) on the same splits of the same images. The 'CV test "
    "folds' score each model on images it did not train on; the 'global holdout' is a set of images that no "
    "model ever trained on, shared by all models. Arms ending in '_lsr' are closed-form linear probes on frozen "
    "features, scored alongside the trained heads.",
    body,
  )


def scores_section(workdir: Path, config) -> str:
  metric = config.eval.box_metric
  body = figure_html(workdir / "boxplot.png", f"{metric} per model, per arm and split")
  rows = results_table.read_rows(workdir / "results.csv")
  if rows and metric in rows[0]:
    stats = summary.summarize(rows, [metric], num_resamples=int(config.eval.bootstrap_resamples), seed=int(config.seed))
    body += table_html(
      ["arm", "split", "training images per class", "models", f"mean {metric}", "95 % CI of the mean", "min–max"],
      [
        [s["arm"], summary.SPLIT_TITLES.get(s["split"], s["split"]), study_analysis.size_text(s["n_per_class"]), s["n"]]
        + [number(s["mean"]), f"{number(s['ci_low'])} to {number(s['ci_high'])}"]
        + [f"{number(s['min'])} to {number(s['max'])}"]
        for s in stats
      ],
    )
  return section_html(
    "scores",
    f"Each dot is one trained model's {metric.replace('_', ' ')}; a box spans the middle half of the models. "
    "A tall box means the result depends a lot on which images a model happened to train on. The dashed line is "
    "what guessing at random would score.",
    body,
  )


def learning_section(workdir: Path) -> str:
  paths = sorted(workdir.glob("learning_curve_*.png"))
  if paths:
    body = "".join(figure_html(p, p.stem.replace("_", " ")) for p in paths)
  else:
    body = paragraph("Not drawn: the study trained on a single training-set size.", "note")
  return section_html(
    "learning",
    "How the score grows with the number of training images per class. A curve still rising at its right end "
    "means more labelled images would probably help; a flat curve means they would not.",
    body,
  )


def ensembles_section(analysis: dict, config) -> str:
  rows = analysis.get("ensembles", [])
  shared = ("accuracy", "balanced_accuracy", "bionic_weighted_accuracy", "macro_f1")  # in every ensemble column
  metric = config.eval.compare_metric if config.eval.compare_metric in shared else "balanced_accuracy"
  body = _skips(analysis, "ensembles")
  columns = [
    ("arm", "arm"),
    ("training images per class", "n_per_class"),
    ("models", "num_models"),
    ("holdout images", "num_images"),
    (f"average single model ({metric})", f"member_mean/{metric}"),
    (f"mean-probability ensemble ({metric})", f"mean_prob/{metric}"),
    (f"majority vote ({metric})", f"majority_vote/{metric}"),
    ("mean-probability ensemble (accuracy)", "mean_prob/accuracy"),
    ("BioNIC leaky vote (compatibility only; weighted accuracy)", study_analysis.LEAKY_COLUMN),
  ]
  if rows:
    cell = lambda value: number(value) if isinstance(value, float) or value is None else value  # noqa: E731
    body += table_html([h for h, _ in columns], [[cell(r.get(key)) for _, key in columns] for r in rows])
  return section_html(
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
  body = _skips(analysis, "triage")
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
    body += "<ul>" + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>"
  folders = analysis.get("triage_folders")
  if folders:
    body += paragraph(
      f"Images of {analysis['triage_csv']['folders_arm']} sorted into {folders['directory']}/high_confidence and "
      f"/low_confidence: {folders['copied']} copied, {folders['written_from_lookup']} drawn from the dataset, "
      f"{len(folders['failed'])} failed.",
      "note",
    )
  return section_html(
    "triage",
    "Trusting only confident predictions and sending the rest to a person trades coverage (how many images are "
    "handled automatically) for accuracy. Read the curve from left to right: the error rate among the trusted "
    "images as more and more of them are trusted. triage.csv lists every holdout image with its bucket.",
    body,
  )


def calibration_section(analysis: dict) -> str:
  body = _skips(analysis, "calibration") + _skips(analysis, "temperature")
  items = analysis.get("calibration", {})
  if items:
    body += figure_html(analysis["files"].get("reliability_png"), "reliability diagram")
    body += table_html(
      ["arm (ensemble)", "ECE on holdout", "temperature (fitted on CV test folds)", "ECE after temperature"],
      [
        [arm, number(c["ece"]), number(c.get("temperature"), 2), number(c.get("ece_after_temperature"))]
        for arm, c in items.items()
      ],
    )
    body += "".join(
      paragraph(f"{arm}: {w}", "note") for arm, c in items.items() for w in c.get("temperature_warnings", [])
    )
  return section_html(
    "calibration",
    "A calibrated model that says '90 % sure' is right 90 % of the time: its points lie on the diagonal. The "
    "expected calibration error (ECE) is the average gap, 0 being perfect. A temperature above 1 means the models "
    "were over-confident; it is fitted on out-of-fold predictions only, then checked on the untouched holdout.",
    body,
  )


def confusion_section(workdir: Path, class_names: Sequence[str]) -> str:
  path = workdir / "confusion_matrices.csv"
  body = ""
  if not path.is_file() or not class_names:
    body = paragraph("Not available: the study wrote no confusion_matrices.csv.", "note")
  else:
    index = {name: i for i, name in enumerate(class_names)}
    sums = collections.defaultdict(lambda: np.zeros((len(class_names),) * 2, np.int64))
    with open(path, newline="") as f:
      for r in csv.DictReader(f):
        sums[(r["arm"], r["split"])][index[r["target"]], index[r["prediction"]]] += int(r["count"])
    arm_order = {arm: k for k, (arm, _) in enumerate(sums)}  # first appearance; CV test folds before holdout
    order = sorted(sums, key=lambda key: (arm_order[key[0]], key[1] != results_table.CV_TEST_SPLIT, key[1]))
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
  return section_html(
    "confusion",
    "Counts summed over all models of an arm: rows are the true classes, columns what the models predicted. The "
    "shaded diagonal holds the correct predictions; a large off-diagonal count shows two classes being confused.",
    body,
  )


def comparisons_section(analysis: dict) -> str:
  info = analysis.get("comparisons")
  body = _skips(analysis, "comparisons")
  if info:
    body += "<ul>" + "".join(f"<li>{esc(r['sentence'])}</li>" for r in info["results"]) + "</ul>"
    body += paragraph(
      "Pairs are models with the same seed, repeat, fold and training-set size in both arms. Models of one study "
      "share training images, so intervals and p-values are somewhat optimistic and are not adjusted for the "
      "number of comparisons. The full table is in comparisons.md.",
      "note",
    )
  return section_html(
    "comparisons",
    "Each arm is compared with the first one model by model, on models trained on exactly the same images, so "
    "the difference is due to the arm and not to a lucky split. 'Helps' or 'hurts' is said only when the 95 % "
    "interval of the mean difference excludes zero.",
    body,
  )


def _example_image(path: str, config, image_lookup) -> np.ndarray | None:
  """A holdout image as uint8, from its file or image_lookup; None (logged) when neither works."""
  root = config.data.root if config.data.source == "folder" and config.data.root else None
  try:
    on_disk = study_analysis.source_file(path, root)
    if on_disk:
      from jaxcell.data import folder  # Only needed for real files (tifffile and friends).

      return folder.decode_image(on_disk, THUMBNAIL_PX, int(config.data.channels), config.data.sixteen_bit)
    if image_lookup is not None:
      return study_analysis.as_uint8_image(image_lookup(path), path)
  except (KeyError, ValueError, OSError) as error:
    log.warning("Report: no thumbnail for %s (%s)", path, error)
  return None


def _thumbnail(array: np.ndarray) -> str:
  image = Image.fromarray(np.squeeze(array) if array.ndim == 3 and array.shape[-1] == 1 else array)
  image = image.resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.NEAREST if image.width < THUMBNAIL_PX else Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return png_data_uri(buffer.getvalue())


def pick_examples(rows: Sequence[dict], bucket: str, count: int = EXAMPLES_PER_BUCKET) -> list[dict]:
  """Trusted images: errors first (most instructive), then the most confident; deferred: least confident first."""
  rows = [r for r in rows if r["bucket"] == bucket]
  if bucket == triage.HIGH:
    rows.sort(key=lambda r: (r["target"] == r["prediction"], -float(r["confidence"])))
  else:
    rows.sort(key=lambda r: float(r["confidence"]))
  return rows[:count]


def examples_section(analysis: dict, config, image_lookup) -> str:
  path = analysis["files"].get("triage_csv")
  body = ""
  if not (path and Path(path).is_file()):
    body = paragraph("Not available: no triage.csv was written (see 'Analyses not done').", "note")
  else:
    arm = analysis["triage_csv"]["folders_arm"]
    with open(path, newline="") as f:
      rows = [r for r in csv.DictReader(f) if r["arm"] == arm]
    body += paragraph(f"Arm {arm}, ensemble, threshold {number(analysis['triage_csv']['threshold'], 2)}.", "note")
    for bucket, title in ((triage.HIGH, "Trusted (high confidence)"), (triage.LOW, "Deferred (low confidence)")):
      figures = []
      for r in pick_examples(rows, bucket):
        array = _example_image(r["path"], config, image_lookup)
        picture = f'<img alt="{esc(r["path"])}" src="{_thumbnail(array)}">' if array is not None else "(no image)"
        verdict = "" if r["target"] == r["prediction"] else ' <span class="wrong">(wrong)</span>'
        figures.append(
          f"<figure>{picture}<figcaption>true: {esc(r['target'])}<br>predicted: {esc(r['prediction'])}{verdict}"
          f"<br>confidence {esc(number(float(r['confidence']), 2))}<br><small>{esc(r['path'])}</small></figcaption>"
          "</figure>"
        )
      body += f"<h3>{esc(title)}</h3>" + (
        f'<div class="thumbs">{"".join(figures)}</div>' if figures else paragraph("No image in this bucket.", "note")
      )
  return section_html(
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
  return section_html(
    "purification",
    "Each image was predicted by models that never trained on it. Where they confidently agree on another class "
    "than the given label, the label may be wrong; 'ambiguous' means two classes are close. These are candidates "
    "for an expert to re-check, not corrections.",
    body,
  )


def skipped_section(analysis: dict) -> str:
  items = analysis.get("skipped", [])
  body = (
    "<ul>" + "".join(f"<li>{esc(s['section'])}: {esc(s['reason'])}</li>" for s in items) + "</ul>"
    if items
    else paragraph("Every analysis was done.")
  )
  return section_html("skipped", "These parts could not be computed for this study, each with its reason.", body)


def write_report(workdir: str | os.PathLike, analysis: dict, config, image_lookup=None) -> str:
  """Writes workdir/report.html from the study's files and `analyze_study`'s result; returns its path."""
  workdir = Path(workdir)
  if not (workdir / "results.csv").is_file():
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
  contents = "".join(f'<li><a href="#{esc(key)}">{esc(title)}</a></li>' for key, title in SECTIONS.items())
  page = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>jaxcell study report</title>'
    f"<style>{_STYLE}</style></head><body><h1>jaxcell study report</h1>"
    f'<p class="note">{esc(workdir.resolve())}</p><nav><ol>{contents}</ol></nav>' + "".join(parts) + "</body></html>\n"
  )
  path = workdir / REPORT_NAME
  path.write_text(page, encoding="utf-8")
  return str(path)
