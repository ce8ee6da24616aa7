"""Study arms: named variants of one set-up, trained side by side on the same data, splits and lanes.

`arm_configs` resolves each arm's config; `prepare_arm` builds an `Arm` from it (model, starting weights,
normalisation), once per study, shared by the arm's lanes.

`config.arms` maps an arm name to overrides of the study config ({group: {field: value}}); every arm gets the same
lanes (seed x repeat x fold x size) with the same random draws, so arm B's lane i is the matched partner of arm A's
lane i and the comparison between them is paired. Presets (`transfer.preset`) are applied per arm, after overrides.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import jax
import jax.numpy as jnp
import ml_collections

from jaxcell import config as config_lib
from jaxcell import models, validation
from jaxcell.convert import pretrained as pretrained_lib
from jaxcell.data import dataset as dataset_lib
from jaxcell.data import loading, normalization, preprocess
from jaxcell.data import splits as splits_lib
from jaxcell.models import presets
from jaxcell.training import engine_setup, trainer
from jaxcell.training import lanes as lanes_lib
from jaxcell.training.interface import ArmSetup

log = logging.getLogger(__name__)

# What arms may change. The data, splits, seeds and outputs are the study's, shared by every arm.
ARM_GROUPS = ("model", "transfer", "train", "augment")
# Per arm: the input size and how images get there, the input normalisation and the pre-processing
# (data.preprocess and its data.preprocess_* parameters).
ARM_DATA_FIELDS = (
  "image_size",
  "resize",
  "normalization",
  *(f for f in config_lib.base_config().data if f.startswith("preprocess")),
)
# The fields that decide the decoded pixels: an arm that changes one reads the images again.
_DECODING_FIELDS = ("image_size", "resize")
DEFAULT_ARM = "main"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _override(config: ml_collections.ConfigDict, arm: str, overrides: dict) -> None:
  for group, fields in overrides.items():
    allowed = group in ARM_GROUPS or group == "data"
    if not allowed or not isinstance(fields, dict):
      raise ValueError(
        f"Invalid config: arm {arm!r} overrides {group!r}; arms may override {ARM_GROUPS} and data.normalization "
        "as {group: {field: value}}."
      )
    for field, value in fields.items():
      if group == "data" and field not in ARM_DATA_FIELDS:
        raise ValueError(
          f"Invalid config: arm {arm!r} overrides data.{field}; every arm shares the study's data (only "
          f"{', '.join('data.' + f for f in ARM_DATA_FIELDS[:3])} and data.preprocess* may differ)."
        )
      if field not in config[group]:
        raise ValueError(f"Invalid config: arm {arm!r} overrides unknown field {group}.{field}.")
      with config.ignore_type():  # e.g. vgg_features None -> 14
        config[group][field] = value


def arm_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{arm name: the full config of that arm} in the order given; validated, presets applied."""
  arms = config.arms.to_dict() if config.arms else {}
  # ConfigDict sorts its keys; its JSON keeps the order the arms were written in, which makes the first arm the
  # baseline of comparisons, predict's default and the purified arm's source.
  arms = {name: arms[name] for name in json.loads(config.arms.to_json_best_effort())} if arms else {}
  if not arms:
    arms = {DEFAULT_ARM: {}}
  out = {}
  for name, overrides in arms.items():
    if not _NAME.match(name) or name.endswith("_lsr"):
      raise ValueError(
        f"Invalid config: arm name {name!r}; use letters, digits, '_', '-', '.' (and not ending in '_lsr', "
        "which names linear-probe results)."
      )
    arm = ml_collections.ConfigDict(config.to_dict())
    arm.arms = ml_collections.ConfigDict()
    _override(arm, name, overrides or {})
    presets.apply_preset(arm)
    validation.check_config(arm)
    out[name] = arm
  if config.purify.retrain:  # The first arm again, trained without the images confident learning flags.
    first = next(iter(out))
    out[purified_name(first)] = ml_collections.ConfigDict(out[first].to_dict())
  return out


def _read_again(name: str, data_config, dataset: dataset_lib.Dataset, cache_dir: str | None) -> dataset_lib.Dataset:
  """The study's images decoded at the arm's size / resize mode; the same images in the same order, or an error."""
  again = loading.load_dataset(data_config, cache_dir=cache_dir)
  if again.paths != dataset.paths or not (again.labels == dataset.labels).all():
    lost = sorted(set(dataset.paths) - set(again.paths))[:3]
    raise ValueError(
      f"Arm {name!r} (data.image_size={data_config.image_size}, data.resize={data_config.resize!r}) does not read "
      f"the same images as the study (e.g. {lost} missing); its comparisons would not be paired. Fix or remove "
      "those files."
    )
  log.info("Arm %s: images read at %d px (%s)", name, data_config.image_size, data_config.resize)
  return again


def purified_name(arm: str) -> str:
  return f"{arm}_purified"


@dataclasses.dataclass
class Arm(ArmSetup):
  """One arm of the study, built once and shared by its lanes: what training needs, and where its weights came from."""

  pretrained: pretrained_lib.Pretrained | None = None
  purify_from: str | None = None  # For a purified arm: the arm whose out-of-fold predictions flag images.


def prepare_arm(
  name: str,
  config,
  dataset: dataset_lib.Dataset,
  splits: splits_lib.Splits,
  images: jax.Array,
  cache_dir: str | None = None,
  study_data: ml_collections.ConfigDict | None = None,
) -> Arm:
  """Builds an arm's model, its (converted or random) starting weights, its pre-processed images and its input
  normalisation.

  `images` are the dataset's images already on device, shared by every arm without pre-processing; an arm with
  data.preprocess gets its own (cached in `cache_dir`), and so does an arm whose data.image_size or data.resize
  differs from the study's (`study_data`): its images are read again from the source, in the same order."""
  model = models.build_model(config.model, dataset.num_classes)
  loaded = None
  if config.transfer.weights:
    loaded = pretrained_lib.load_pretrained(config.transfer.weights, config.model.name)
  if study_data is not None and any(config.data[f] != study_data[f] for f in _DECODING_FIELDS):
    dataset = _read_again(name, config.data, dataset, cache_dir)
    images = jnp.asarray(dataset.images)
  init = engine_setup.make_init(model, dataset.images.shape[1:], loaded)
  frozen = engine_setup.shared_frozen(init, config.seed, config.train.frozen)
  if loaded is not None:
    unused = loaded.unused(jax.eval_shape(init, jax.random.key(0, impl=lanes_lib.INIT_PRNG)))
    log.info(
      "Arm %s: weights from %s; %d arrays of the file unused (dropped layers, old head)",
      name,
      config.transfer.weights,
      len(unused),
    )
  pixels = dataset.images
  if config.data.preprocess != "none":
    pixels = preprocess.apply(dataset.images, preprocess.params_from_config(config.data), cache_dir)
    images = jnp.asarray(pixels)
    log.info("Arm %s: images pre-processed with %s", name, config.data.preprocess)
  if config.data.normalization == "weights":
    mean, std = loaded.normalization(dataset.images.shape[-1])
  else:
    mean, std = normalization.normalization_constants(config.data.normalization, pixels[splits.cv_pool])
  data = trainer.DeviceData(
    images=images, labels=jnp.asarray(dataset.labels, jnp.int32), mean=jnp.asarray(mean), std=jnp.asarray(std)
  )
  return Arm(name, config, model, init, frozen, data, loaded)
