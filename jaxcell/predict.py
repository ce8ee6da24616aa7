"""Applying a finished study to new images: the ensemble of an arm's models, with confidence and triage bucket.

  python -m jaxcell.predict --workdir runs/demo --images new_cells/ [more files or folders] [--threshold 0.85]

Each image is read and resized exactly as the study read its training images, normalised with the arm's constants
(study.json) and scored by every trained model of the arm (the lanes of its largest training-set size); the
ensemble is the mean probability. Images with confidence >= threshold are 'high_confidence' (trust), the rest
'low_confidence' (send to a human). Writes predictions_new.csv (or --out) and reports unreadable images.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell import arms as arms_lib
from jaxcell import models
from jaxcell.analysis import ensembles
from jaxcell.data import channel_files, decode, preprocess
from jaxcell.training import checkpoints, inference, optim, trainer
from jaxcell.workdir import layout, predictions, records, results


class PredictError(Exception):
  """A refusal with a message for the user (no traceback)."""


def collect_image_paths(inputs: list[str]) -> list[str]:
  """Files as given; folders searched recursively for image files (sorted), links included (a broken one is
  listed and then skipped with its reason). Missing paths are an error."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      for root, _, files in sorted(os.walk(item, followlinks=False)):
        paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(decode.IMAGE_EXTENSIONS)]
    elif os.path.isfile(item) or os.path.islink(item):
      paths.append(item)
    else:
      raise PredictError(f"{item} does not exist.")
  if not paths:
    raise PredictError(f"No image files ({', '.join(decode.IMAGE_EXTENSIONS)}) under {', '.join(inputs)}.")
  return paths


def arm_lanes(workdir: str, arm: str, study: dict, allow_unfinished: bool = False) -> list[int]:
  """The trained lanes of `arm` with its largest training-set size (None = all images counts as largest).

  Refuses an unfinished study (models of that size still to train) unless `allow_unfinished`; diverged models
  are never used."""
  path = layout.path(workdir, layout.RESULTS)
  if not path.exists():
    raise PredictError(f"{workdir} has no results.csv: no model of this study has finished training.")
  rows = [r for r in results.read_rows(path) if r["arm"] == arm]
  if not rows:
    raise PredictError(f"No finished models of arm {arm!r} in {path}.")
  planned = {int(lane): size for lane, size in study.get("lanes", {}).get(arm, {}).items()}
  largest = layout.largest_size(planned.values() if planned else (r["n_per_class"] for r in rows))
  finished = {int(r["lane"]) for r in rows if r["n_per_class"] == largest}
  expected = {lane for lane, size in planned.items() if size == largest} or finished
  if finished < expected and not allow_unfinished:
    raise PredictError(
      f"The study in {workdir} is unfinished: {len(finished)} of the {len(expected)} models of arm {arm!r} "
      f"(n_per_class {layout.size_text(largest)}) are trained. Re-run its python -m jaxcell.main command to finish "
      "it, or pass --allow_unfinished to predict with the models there are."
    )
  usable = sorted({int(r["lane"]) for r in results.usable(rows) if r["n_per_class"] == largest})
  if not usable:
    raise PredictError(
      f"Every trained model of arm {arm!r} diverged (see results.csv); there is nothing to predict with."
    )
  return usable


def load_arm_variables(workdir: str, arm: str, lanes: list[int]) -> list[dict]:
  """Each lane's inference variables (its trained parameters + the arm's shared frozen ones), from checkpoints."""
  groups = records.read_groups(workdir)
  where = {lane: (name, i) for name, members in groups.items() for i, lane in enumerate(members)}
  missing = [lane for lane in lanes if lane not in where]
  if missing:
    raise PredictError(
      f"No checkpoint for lanes {missing} of arm {arm!r} in {workdir}/checkpoints (was output.checkpoint off?). "
      "Re-run the study with checkpoints on to predict new images."
    )
  frozen = {}
  frozen_dir = layout.frozen_directory(workdir, arm)
  if frozen_dir.is_dir():
    ckpt = checkpoints.Checkpointer(frozen_dir)
    frozen = ckpt.restore_raw()
    ckpt.close()
  restored, out = {}, []
  for lane in lanes:
    name, position = where[lane]
    if name not in restored:
      ckpt = checkpoints.Checkpointer(layout.checkpoints_dir(workdir) / name)
      restored[name] = ckpt.restore_raw()
      ckpt.close()
    state = jax.tree.map(lambda x: x[position], restored[name])
    out.append({"params": optim.merge_params(state["params"], frozen), "batch_stats": state["batch_stats"]})
  return out


def read_images(
  paths: list[str], image_shape: list[int], sixteen_bit: str, resize: str = "resize", channel_pattern: str = ""
) -> tuple[np.ndarray, list, list]:
  """(uint8 images, kept paths, [(path, reason)] skipped) — unreadable files are reported, not dropped silently.

  With `channel_pattern` (the study's), the files are channel files grouped into images as for training; a kept
  path is then the image's id (`folder/B02_s1_w{channel}.png`)."""
  size, channels = image_shape[0], image_shape[2]
  images, kept, skipped = [], [], []
  files_of = {path: None for path in paths}
  if channel_pattern:
    grouped, files_of, not_grouped = channel_files.group([(p, "", None) for p in paths], channel_pattern, channels)
    skipped += [(s.path, s.reason) for s in not_grouped]
    files_of = {image: files_of[image] for image, _, _ in grouped}
  for path, files in files_of.items():
    if files is None:
      image, reason = decode.decode_or_reason(path, size, channels, sixteen_bit, resize)
    else:
      try:
        image, reason = channel_files.decode_channels("", files, size, channels, sixteen_bit, resize), ""
      except Exception as e:  # pylint: disable=broad-except
        image, reason = None, decode.failure_reason(e)
    if image is None:
      skipped.append((path, reason))
    else:
      images.append(image)
      kept.append(path)
  if not images:
    raise PredictError(f"None of the {len(paths)} images could be read; first problem: {skipped[0][1]}")
  return np.stack(images), kept, skipped


def predict_new_images(
  workdir: str, inputs: list[str], arm: str | None = None, threshold: float = 0.8, allow_unfinished: bool = False
) -> dict:
  """Scores new images with an arm's ensemble -> dict(rows, skipped, arm, num_models, unlike).

  A row's `warning` says when an image is unlike the training images (channels, bit depth, size); such an image
  goes to a human ('low_confidence') however confident the models are."""
  if not 0.0 <= threshold <= 1.0:
    raise PredictError(f"--threshold {threshold} must be between 0 and 1.")
  try:
    config, study = records.read_config(workdir), records.read_study(workdir)
  except records.MissingRecordError as e:
    raise PredictError(str(e)) from None
  arm_configs = arms_lib.arm_configs(config)
  arm = arm or next(iter(study["arms"]))  # study.json keeps the arms in the order the config gave them.
  if arm not in arm_configs:
    raise PredictError(f"Unknown arm {arm!r}; this study has {list(arm_configs)}.")
  class_names = study["class_names"]
  lanes = arm_lanes(workdir, arm, study, allow_unfinished)
  variables = load_arm_variables(workdir, arm, lanes)
  stats, arm_data = study["arms"][arm], arm_configs[arm].data
  shape = stats.get("image_shape", study["image_shape"])  # The arm's own input size (older studies: the study's).
  pattern = config.data.get("channel_pattern") or ""
  images, kept, skipped = read_images(
    collect_image_paths(inputs), shape, config.data.sixteen_bit, arm_data.resize, pattern
  )
  images = preprocess.apply(images, preprocess.params_from_config(arm_data))  # As the arm trained.
  data = trainer.DeviceData(
    images=jnp.asarray(images),
    labels=jnp.zeros(len(images), jnp.int32),
    mean=jnp.asarray(stats["mean"], jnp.float32),
    std=jnp.asarray(stats["std"], jnp.float32),
  )
  model = models.build_model(arm_configs[arm].model, len(class_names))
  predict = inference.make_predictor(model, int(config.eval.batch_size))
  idx = np.arange(len(images))
  probs = np.stack([predict(v, data, idx) for v in variables])  # [models, images, classes]
  mean = ensembles.mean_probability(probs)
  _, vote_share = ensembles.majority_vote(probs)
  rows = []
  for i, path in enumerate(kept):
    pred = int(mean[i].argmax())
    confidence = float(mean[i, pred])
    first = (channel_files.image_files("", [path], pattern)[path] or [""])[0] if pattern else path
    described = decode.describe(first)
    if described and pattern:
      described["channels"] = shape[2]
    warning = decode.format_warning(described, study.get("source_format", {}))
    row = {
      "path": path,
      "status": "scored",
      "prediction": class_names[pred],
      "confidence": f"{confidence:.6f}",
      "bucket": "high_confidence" if confidence >= threshold and not warning else "low_confidence",
      "vote_share": f"{vote_share[i]:.3f}",
      "warning": warning,
    }
    row.update(predictions.probability_columns(class_names, mean[i]))
    rows.append(row)
  unlike = sum(bool(r["warning"]) for r in rows)
  return {"rows": rows, "skipped": skipped, "arm": arm, "num_models": len(variables), "unlike": unlike}


def skipped_rows(skipped: list[tuple[str, str]], columns: list[str]) -> list[dict]:
  """predictions_new.csv rows of the files that could not be scored: status 'skipped' and the reason."""
  return [
    {**{c: "" for c in columns}, "path": path, "status": "skipped", "warning": reason} for path, reason in skipped
  ]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxcell.predict", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="A finished study's folder.")
  parser.add_argument("--images", required=True, nargs="+", help="Image files and/or folders (searched recursively).")
  parser.add_argument("--arm", default=None, help="Which arm's models to use (default: the study's first arm).")
  parser.add_argument("--threshold", type=float, default=0.8, help="Confidence to trust a prediction (BioNIC: 0.8).")
  parser.add_argument("--out", default=None, help="Output CSV (default: WORKDIR/predictions_new.csv).")
  parser.add_argument(
    "--allow_unfinished", action="store_true", help="Predict with the models an unfinished study has trained so far."
  )
  args = parser.parse_args(argv)
  try:
    result = predict_new_images(args.workdir, args.images, args.arm, args.threshold, args.allow_unfinished)
  except (PredictError, ValueError, FileNotFoundError) as e:
    print(f"jaxcell.predict: {e}", file=sys.stderr)
    return 2
  out = args.out or layout.path(args.workdir, layout.NEW_PREDICTIONS)
  rows = result["rows"]
  predictions.write_new_predictions(out, rows + skipped_rows(result["skipped"], list(rows[0])))
  high = sum(r["bucket"] == "high_confidence" for r in rows)
  print(
    f"{len(rows)} images scored by the {result['num_models']} models of arm '{result['arm']}': "
    f"{high} high-confidence (>= {args.threshold}), {len(rows) - high} for a human; "
    f"{len(result['skipped'])} unreadable (listed with the reason); written to {out}."
  )
  if result["unlike"]:
    print(
      f"warning: {result['unlike']} images are unlike the training images (channels, bit depth or size; see the "
      "'warning' column); they are sent to a human whatever their confidence.",
      file=sys.stderr,
    )
  for path, reason in result["skipped"]:
    print(f"skipped {path}: {reason}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
