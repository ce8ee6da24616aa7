"""BioNIC's transfer set-ups as named presets (`transfer.preset`), plus a full fine-tune and a linear probe.

A preset fills the model and training fields that define a set-up; the model family (ResNet or VGG) and the
weights stay the user's choice:

  preset         model fields set                                   frozen (not trained)
  resnet_all     head=bionic_mlp (Linear-ReLU-BN-Linear, 256)       the whole trunk (everything but fc)
  resnet_lower   stages=2 (layer3/layer4 removed), head=bionic_mlp  the whole trunk
  vgg_all        vgg_features=None, head=bionic_mlp (256)           features.* (classifier.0/.3 are trained)
  vgg_lower      vgg_features=14, head=bionic_mlp (4096, 256)       features.*
  full           (nothing)                                          nothing: every layer is fine-tuned
  linear_probe   head=linear, trunk_bn=running                      the whole trunk (a fixed feature extractor)

BioNIC keeps frozen BatchNorm in train mode (batch statistics, running statistics updated on the target data);
that is `model.trunk_bn='batch'`, the default. Set `model.trunk_bn='running'` for frozen statistics, which also lets
a frozen trunk's features be computed once (transfer.feature_cache).
"""

from __future__ import annotations

# Every parameter outside the head: the head is always the submodule named 'fc'.
TRUNK = "^(?!fc/)"
VGG_FEATURES = "^features_"

_FIELDS = {
  "resnet_all": ({"head": "bionic_mlp", "stages": 4}, TRUNK, "resnet"),
  "resnet_lower": ({"head": "bionic_mlp", "stages": 2}, TRUNK, "resnet"),
  "vgg_all": ({"head": "bionic_mlp", "vgg_features": None}, VGG_FEATURES, "vgg"),
  "vgg_lower": ({"head": "bionic_mlp", "vgg_features": 14}, VGG_FEATURES, "vgg"),
  "full": ({}, "", None),
  "linear_probe": ({"head": "linear", "trunk_bn": "running"}, TRUNK, None),
}
PRESETS = tuple(_FIELDS)


def apply_preset(config) -> None:
  """Fills config.model / config.train.frozen from config.transfer.preset ('' = leave the config as it is)."""
  name = config.transfer.preset
  if not name:
    return
  if name not in _FIELDS:
    raise ValueError(f"transfer.preset={name!r}; choose one of {PRESETS} or ''.")
  fields, frozen, family = _FIELDS[name]
  if family and not config.model.name.startswith(family):
    raise ValueError(
      f"transfer.preset={name!r} is a {family.upper()} set-up but model.name={config.model.name!r}; "
      f"choose a {family} model (e.g. {'resnet18' if family == 'resnet' else 'vgg16'})."
    )
  for field, value in fields.items():
    config.model[field] = value
  config.train.frozen = frozen
