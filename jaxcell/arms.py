"""Study arms: named variants of one set-up, trained side by side on the same data, splits and lanes.

`config.arms` maps an arm name to overrides of the study config ({group: {field: value}}); every arm gets the same
lanes (seed x repeat x fold x size) with the same random draws, so arm B's lane i is the matched partner of arm A's
lane i and the comparison between them is paired. Presets (`transfer.preset`) are applied per arm, after overrides.
"""

from __future__ import annotations

import re

import ml_collections

from jaxcell import config as config_lib
from jaxcell.models import presets

# What arms may change. The data, splits, seeds and outputs are the study's, shared by every arm.
ARM_GROUPS = ("model", "transfer", "train", "augment")
ARM_DATA_FIELDS = ("normalization",)
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
          f"data.normalization may differ)."
        )
      if field not in config[group]:
        raise ValueError(f"Invalid config: arm {arm!r} overrides unknown field {group}.{field}.")
      with config.ignore_type():  # e.g. vgg_features None -> 14
        config[group][field] = value


def arm_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{arm name: the full config of that arm} in the order given; validated, presets applied."""
  arms = config.arms.to_dict() if config.arms else {}
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
    config_lib.validate(arm)
    out[name] = arm
  if config.purify.retrain:  # The first arm again, trained without the images confident learning flags.
    first = next(iter(out))
    out[purified_name(first)] = ml_collections.ConfigDict(out[first].to_dict())
  return out


def purified_name(arm: str) -> str:
  return f"{arm}_purified"
