"""Every config field checked before anything is written or computed: type, range, allowed values, combinations.

`check_config(c)` raises ValueError("Invalid config: ...") naming the field, the value and what to use instead.
`RULES` holds one rule per leaf field of `config.base_config()` (a test keeps the two in step), so a new field
cannot go unchecked. Unknown fields never get this far: ml_collections refuses them when the override is parsed
(`python -m jaxcell.main` turns that into a one-line message with its "did you mean").
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable

from jaxcell import config as config_lib
from jaxcell.analysis import purification
from jaxcell.data import dataset, decode, preprocess
from jaxcell.evaluation import metrics
from jaxcell.models import DTYPES, cnn, conv, heads, resnet

_STRATEGY = re.compile(r"^(auto|vmap|vmap_xla|loop|map[1-9][0-9]*)$")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)  # NaN is no setting.


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> tuple[Callable, str]:
  text = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
  ok = lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high)  # noqa: E731
  return ((lambda v: v is None or ok(v)), text + " or None") if optional else (ok, text)


def number(low=None, high=None, *, low_open=False, high_open=False, optional=False) -> tuple[Callable, str]:
  lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
  hi = "" if high is None else (f" < {high}" if high_open else f" <= {high}")
  ok = lambda v: (  # noqa: E731
    _is_number(v)
    and (low is None or (v > low if low_open else v >= low))
    and (high is None or (v < high if high_open else v <= high))
  )
  text = f"a number{lo}{' and' if lo and hi else ''}{hi}"
  return ((lambda v: v is None or ok(v)), text + " or None") if optional else (ok, text)


def choice(*allowed) -> tuple[Callable, str]:
  return (lambda v: isinstance(v, str) and v in allowed), f"one of {allowed}"


def boolean() -> tuple[Callable, str]:
  return (lambda v: isinstance(v, bool)), "True or False"


def text(optional: bool = False) -> tuple[Callable, str]:
  if optional:
    return (lambda v: v is None or isinstance(v, str)), "a string or None"
  return (lambda v: isinstance(v, str)), "a string"


def colour_list() -> tuple[Callable, str]:
  def ok(v) -> bool:
    from matplotlib import colors  # Only to check the names.

    names = [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else None
    return names is not None and all(colors.is_color_like(n) for n in names)

  return ok, "'' or comma-separated matplotlib colours / #rrggbb, e.g. 'blue,green,red'"


def channel_pattern() -> tuple[Callable, str]:
  def ok(v) -> bool:
    return isinstance(v, str) and (v == "" or ("{channel}" in v and "/" not in v))

  return ok, "'' or a file-name pattern with a {channel} field, e.g. '{well}_s{site}_w{channel}.png'"


def local_folder() -> tuple[Callable, str]:
  return (lambda v: isinstance(v, str) and "://" not in v), "'auto', '' or a folder on this machine (not a bucket URI)"


def regex(optional: bool = False) -> tuple[Callable, str]:
  def ok(v) -> bool:
    if v is None or v == "":
      return optional or v == ""
    try:
      re.compile(v)
    except (re.error, TypeError):
      return False
    return True

  return ok, "a valid regular expression" + (" or None" if optional else "")


def pair(low: float, high: float) -> tuple[Callable, str]:
  ok = lambda v: (  # noqa: E731
    isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v) and low < v[0] <= v[1] <= high
  )
  return ok, f"a pair (low, high) with {low} < low <= high <= {high}"


def sizes() -> tuple[Callable, str]:
  ok = lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(n is None or (_is_int(n) and n >= 1) for n in v)  # noqa: E731
  return ok, "a non-empty tuple of positive sizes or None (= all images), e.g. (10, 20, None)"


def fractions(strictly_increasing: bool) -> tuple[Callable, str]:
  def ok(v) -> bool:
    if not isinstance(v, (tuple, list)) or not v or not all(_is_number(x) and 0 < x < 1 for x in v):
      return False
    return not strictly_increasing or all(a < b for a, b in zip(v, v[1:]))

  kind = "increasing fractions" if strictly_increasing else "values"
  return ok, f"a non-empty tuple of {kind} strictly between 0 and 1"


def metric() -> tuple[Callable, str]:
  scalar = metrics.SCALAR_METRICS
  ok = lambda v: isinstance(v, str) and (v in scalar or v.startswith(metrics.RECALL_PREFIX))  # noqa: E731
  return ok, f"one of {scalar} or '{metrics.RECALL_PREFIX}<class>'"


def head_hidden() -> tuple[Callable, str]:
  ok = lambda v: (
    v is None
    or (_is_int(v) and v >= 1)
    or (  # noqa: E731
      isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)
    )
  )
  return ok, "None, a positive width or a tuple of positive widths"


def strategy() -> tuple[Callable, str]:
  return (lambda v: isinstance(v, str) and bool(_STRATEGY.match(v))), "'auto', 'vmap', 'vmap_xla', 'loop' or 'mapN'"


RULES: dict[str, tuple[Callable, str]] = {
  "seed": integer(0),
  "data.source": choice(*dataset.SOURCES),
  "data.root": text(),
  "data.tfds_name": text(),
  "data.tfds_split": (
    (lambda v: isinstance(v, str) and bool(v.strip())),
    "a tfds split such as 'train' or 'train[:80%]'",
  ),
  "data.tfds_data_dir": text(),
  "data.cache_dir": local_folder(),
  "data.image_size": integer(8),
  "data.resize": choice(*decode.RESIZE_MODES),
  "data.channels": ((lambda v: _is_int(v) and 1 <= v <= 64), "1 (greyscale), 3 (RGB) or the channel count (<= 64)"),
  "data.channel_pattern": channel_pattern(),
  "output.channel_colors": colour_list(),
  "data.sixteen_bit": choice("full_range", "per_image"),
  "data.group_regex": regex(optional=True),
  "data.group_csv": text(optional=True),
  "data.normalization": choice("dataset", "imagenet", "weights", "none"),
  "data.preprocess": choice(*preprocess.METHODS),
  "data.preprocess_tophat_size": integer(1),
  "data.preprocess_opening_size": integer(1),
  "data.preprocess_threshold_block": ((lambda v: _is_int(v) and v >= 3 and v % 2 == 1), "an odd integer >= 3"),
  "data.preprocess_threshold_offset": number(-255.0, 255.0),
  "data.preprocess_clahe_clip_limit": number(0.0, 1.0, low_open=True),
  "data.preprocess_clahe_tiles": integer(1),
  "data.preprocess_lbp_points": integer(1, 254),
  "data.preprocess_lbp_radius": number(0.0, low_open=True),
  "data.synthetic.images_per_class": integer(2),
  "data.synthetic.seed": integer(0),
  "data.synthetic.collection": choice("demo", "screen"),
  "protocol.holdout_fraction": number(0.0, 1.0, high_open=True),
  "protocol.num_folds": integer(2),
  "protocol.num_repeats": integer(1),
  "protocol.reshuffle_folds": boolean(),
  "protocol.max_per_class": integer(1, optional=True),
  "protocol.n_per_class": sizes(),
  "protocol.num_seeds": integer(1),
  "model.name": choice(*config_lib.MODEL_NAMES),
  "model.width": number(0.0, low_open=True),
  "model.stages": integer(1, 4),
  "model.head": choice(*heads.HEADS),
  "model.head_hidden": head_hidden(),
  "model.conv_impl": choice(*conv.CONV_IMPLS),
  "model.dtype": choice(*DTYPES),
  "model.trunk_bn": choice(*resnet.TRUNK_BN_MODES),
  "model.vgg_features": integer(1, optional=True),
  "transfer.weights": text(),
  "transfer.preset": choice(*config_lib.PRESETS),
  "transfer.feature_cache": choice("auto", "off"),
  "transfer.feature_views": integer(1),
  "transfer.lsr_probe": boolean(),
  "transfer.lsr_l2": number(0.0, low_open=True),
  "train.frozen": regex(),
  "train.optimizer": choice(*config_lib.OPTIMIZERS),
  "train.learning_rate": number(0.0, low_open=True),
  "train.momentum": number(0.0, 1.0, high_open=True),
  "train.weight_decay": number(0.0),
  "train.schedule": choice(*config_lib.SCHEDULES),
  "train.warmup_steps": integer(0),
  "train.step_boundaries": fractions(strictly_increasing=True),
  "train.step_factor": number(0.0, 1.0, low_open=True),
  "train.batch_size": integer(1),
  "train.num_epochs": integer(0),
  "train.num_steps": integer(1, optional=True),
  "train.class_balanced": boolean(),
  "train.steps_per_chunk": integer(1),
  "train.divergence_loss": number(0.0, low_open=True),
  "augment.rotation_degrees": number(0.0, 180.0),
  "augment.hflip": boolean(),
  "augment.vflip": boolean(),
  "augment.brightness": number(0.0, 1.0, high_open=True),
  "augment.contrast": number(0.0, 1.0, high_open=True),
  "augment.crop_scale": pair(0.0, 1.0),
  "augment.crop_ratio": pair(0.0, float("inf")),
  "engine.strategy": strategy(),
  "engine.autotune_steps": integer(2),
  "engine.autotune_cache": text(),
  "engine.data_parallel": integer(1),
  "engine.distributed": boolean(),
  "engine.distributed_timeout": integer(10),
  "engine.compilation_cache": text(),
  "engine.compile_ahead": choice("auto", "on", "off"),
  "eval.batch_size": integer(1),
  "eval.bootstrap_resamples": integer(100),
  "eval.box_metric": metric(),
  "eval.triage_thresholds": fractions(strictly_increasing=False),
  "eval.target_accuracy": number(0.0, 1.0, low_open=True),
  "eval.calibration_bins": integer(2),
  "eval.temperature_scaling": boolean(),
  "eval.compare_metric": metric(),
  "purify.method": choice(*purification.METHODS),
  "purify.retrain": boolean(),
  "output.checkpoint": boolean(),
  "output.checkpoint_every_chunks": integer(1),
  "output.log_every_steps": integer(1),
  "output.triage_folders": boolean(),
  "output.report": boolean(),
}


PRETRAIN_RULES: dict[str, tuple[Callable, str]] = {
  "pretrain.objective": choice(*config_lib.PRETRAIN_OBJECTIVES),
  "pretrain.num_steps": integer(1),
  "pretrain.batch_size": integer(2),
  "pretrain.learning_rate": number(0, low_open=True),
  "pretrain.weight_decay": number(0),
  "pretrain.warmup_steps": integer(0),
  "pretrain.temperature": number(0, low_open=True),
  "pretrain.projection_dim": integer(1),
  "pretrain.holdout_fraction": number(0, 1, low_open=True, high_open=True),
  "pretrain.probe_every_steps": integer(1),
  "pretrain.probe_l2": number(0, low_open=True),
  "pretrain.checkpoint_every_steps": integer(1),
  "pretrain.log_every_steps": integer(1),
  "pretrain.steps_per_chunk": integer(1),
  "pretrain.compute_dtype": choice("auto", "float32", "bfloat16"),
}


def check_pretrain_config(c) -> None:
  """check_config for pretrain_config(): every field by its rule (the study's for data, model, augment, engine)."""
  _check_fields(c, {**RULES, **PRETRAIN_RULES}, "config.pretrain_config()")
  _check(c.data.source != "folder" or bool(c.data.root), "data.source='folder' needs data.root=<image folder>.")
  p = c.pretrain
  _check(
    p.objective != "channel_identity" or c.data.channels >= 2,
    "pretrain.objective='channel_identity' needs multi-channel images: data.channels >= 2.",
  )
  _check(p.objective != "self_supervised" or p.batch_size >= 4, "self_supervised needs pretrain.batch_size >= 4.")
  _check_model_input_size(c)


def leaves(c, prefix: str = "") -> dict[str, object]:
  """{'group.field': value} of every leaf of a config (arms excluded: they are overrides, checked per arm)."""
  out = {}
  for key in c.keys():
    value = c[key]
    name = f"{prefix}{key}"
    if name == "arms":
      continue
    if isinstance(value, config_lib.ConfigDict):
      out.update(leaves(value, f"{name}."))
    else:
      out[name] = value
  return out


def _check_fields(c, rules: dict, source: str) -> None:
  """Every leaf of `c` by its rule; an unknown field is refused with the closest known one."""
  for name, value in leaves(c).items():
    if name not in rules:
      close = difflib.get_close_matches(name, rules, n=1)
      hint = f' Did you mean "{close[0]}"?' if close else ""
      raise ValueError(f"Invalid config: unknown field {name}={value!r} (not in {source}).{hint}")
    ok, wanted = rules[name]
    _check(ok(value), f"{name}={value!r}; use {wanted}.")


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(f"Invalid config: {message}")


def check_config(c) -> None:
  """Raises ValueError('Invalid config: <field>=<value>; use ...') for the first bad field or combination."""
  _check_fields(c, RULES, "config.base_config()")
  _check(c.data.source != "folder" or bool(c.data.root), "data.source='folder' needs data.root=<image folder>.")
  _check(
    c.data.source != "tfds" or bool(c.data.tfds_name),
    "data.source='tfds' needs data.tfds_name=<tensorflow-datasets name>, e.g. 'malaria'.",
  )
  _check(
    c.data.normalization != "weights" or bool(c.transfer.weights),
    "data.normalization='weights' needs transfer.weights=<converted .npz>.",
  )
  _check(c.train.num_steps is not None or c.train.num_epochs > 0, "set train.num_epochs > 0 or train.num_steps.")
  _check(not (c.data.group_regex and c.data.group_csv), "set at most one of data.group_regex and data.group_csv.")
  _check_preprocess_sizes(c.data)
  _check_model_input_size(c)


# The pixel-size parameters each pre-processing method uses: they must fit in data.image_size.
_PREPROCESS_SIZES = {
  "tophat_otsu": ("preprocess_tophat_size",),
  "tophat_mean": ("preprocess_tophat_size", "preprocess_threshold_block"),
  "sobel_mean": ("preprocess_threshold_block",),
  "erode": ("preprocess_opening_size",),
}


def _check_preprocess_sizes(data) -> None:
  size, method = data.image_size, data.preprocess
  for field in _PREPROCESS_SIZES.get(method, ()):
    _check(data[field] <= size, f"data.{field}={data[field]} is larger than data.image_size={size} ({method}).")
  if method == "lbp":
    _check(
      data.preprocess_lbp_radius < size / 2,
      f"data.preprocess_lbp_radius={data.preprocess_lbp_radius} needs to be below half of data.image_size={size}.",
    )


# BioNIC's CNNs shrink their input in every conv/pool block; below this side nothing is left.
_CNN_BLOCKS = {"cnn_all": len(cnn.CNN_ALL_CHANNELS), "cnn_flat": len(cnn.CNN_FLAT_CHANNELS)}


def _check_model_input_size(c) -> None:
  blocks = _CNN_BLOCKS.get(c.model.name)
  if blocks is not None:
    minimum = cnn.min_input_size(blocks)
    _check(
      c.data.image_size >= minimum,
      f"model.name={c.model.name!r} needs data.image_size >= {minimum} (its {blocks} conv/pool blocks shrink "
      f"smaller images to nothing); got {c.data.image_size}. Raise data.image_size or choose a ResNet.",
    )
