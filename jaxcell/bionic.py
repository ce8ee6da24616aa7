"""BioNIC's experiment catalogue: its datasets' settings, its model set-ups and its experiment groups as jaxcell
configs (configs/bionic.py, configs/bionic_preprocess.py, configs/bionic_augment.py build on `experiment_config`).

Sources are the study's code and notebook as summarised in the reference (bionic-study.md): epochs and learning rates
actually used per dataset (§11.3), the adaptive-threshold cutoff per dataset (§3.3), the pre-processing baseline per
dataset (§1), BioNIC's max_class_samples (§2). An experiment is a set of arms of one study, so every comparison in it
is paired (same splits, seeds and random draws per lane).

  experiment    arms (the first is the baseline of the paired comparisons)
  main          one arm: the model given (default)
  blog1         Vgg_all, Vgg_lower, ResNet_all, ResNet_lower, CNN_all, CNN_flat (ImageNet weights per family)
  preprocess    none (the dataset's baseline model), erode, sobel_otsu, sobel_mean, tophat_otsu, tophat_mean, clahe, lbp
  augment       none, flips, rotation, bionic (rotation + flips), color_jitter, crop, all
  image_size    resize (to size), center_crop (the central size square, no resize), large (resized to large_size)
  cellnet       ResNet_all, CellNet_all, ResNet_lower, CellNet_lower: BioNIC's two ResNet set-ups from ImageNet
                (resnet18_weights=) and from a CellNet (cellnet=<python -m jaxcell.pretrain workdir>)
"""

from __future__ import annotations

import dataclasses

from jaxcell import config as config_lib

# BioNIC's model names -> (jaxcell model, transfer preset). CNN_all / CNN_flat are trained end to end.
MODELS = {
  "ResNet_all": ("resnet18", "resnet_all"),
  "ResNet_lower": ("resnet18", "resnet_lower"),
  "Vgg_all": ("vgg16", "vgg_all"),
  "Vgg_lower": ("vgg16", "vgg_lower"),
  "CNN_all": ("cnn_all", ""),
  "CNN_flat": ("cnn_flat", ""),
}


@dataclasses.dataclass(frozen=True)
class BionicDataset:
  """What BioNIC ran on one of its datasets."""

  epochs: int | None  # blog1/blog2 epochs (§11.3); None where the sources do not say (BioNIC's default 8 is used).
  learning_rate: float | None  # Adam learning rate (§11.3).
  baseline: str  # The model the pre-processing study was built on (§1).
  threshold_cutoff: float  # C of the adaptive-mean threshold (§3.3).
  max_per_class: int | None = None  # BioNIC's max_class_samples.
  tfds_name: str = ""  # The tensorflow-datasets copy of the data, where one exists.


DATASETS = {
  "kaggle_bowl": BionicDataset(20, 1e-3, "ResNet_all", 5),
  "malaria_cell_images": BionicDataset(30, 1e-3, "CNN_all", 3, max_per_class=500, tfds_name="malaria"),
  "blood_WBC": BionicDataset(30, 1e-2, "CNN_all", 60),
  "blood_WBC_segmented": BionicDataset(30, 1e-3, "CNN_all", 3),
  "cat_images_border": BionicDataset(30, 1e-3, "Vgg_all", 5),
  "labeled_confocal_protein": BionicDataset(20, 1e-3, "ResNet_lower", 5),
  "CHO_images": BionicDataset(15, 1e-3, "Vgg_all", 50),
  "synimages": BionicDataset(30, 1e-2, "Vgg_lower", 10),
  "covid_mini": BionicDataset(None, None, "Vgg_lower", 1),
  "covid_lungs_ct": BionicDataset(30, 1e-3, "Vgg_all", 50),
  "biomed_self_label_shape": BionicDataset(None, None, "Vgg_all", 5, max_per_class=500),
}
TFDS_DATASETS = {d.tfds_name: name for name, d in DATASETS.items() if d.tfds_name}

# BioNIC's pre-processing variants in its blog2 plot order, then LBP (an input transform it ran but did not plot).
PREPROCESS_ARMS = ("none", "erode", "sobel_otsu", "sobel_mean", "tophat_otsu", "tophat_mean", "clahe", "lbp")

_NO_AUGMENT = {"rotation_degrees": 0.0, "hflip": False, "vflip": False, "brightness": 0.0, "contrast": 0.0}
# BioNIC's ColorJitter() had all-zero arguments (a no-op); a real jitter is what the question is about.
_JITTER = {"brightness": 0.2, "contrast": 0.2}
_CROP = {"crop_scale": (0.5, 1.0)}  # torchvision's (0.08, 1) default cuts most cells out of a crop.
AUGMENT_ARMS = {
  "none": dict(_NO_AUGMENT),
  "flips": {**_NO_AUGMENT, "hflip": True, "vflip": True},
  "rotation": {**_NO_AUGMENT, "rotation_degrees": 90.0},
  "bionic": {**_NO_AUGMENT, "rotation_degrees": 90.0, "hflip": True, "vflip": True},  # Its blog1 pipeline.
  "color_jitter": {**_NO_AUGMENT, **_JITTER},
  "crop": {**_NO_AUGMENT, **_CROP},
  "all": {"rotation_degrees": 90.0, "hflip": True, "vflip": True, **_JITTER, **_CROP},
}
EXPERIMENTS = ("main", "blog1", "preprocess", "augment", "image_size", "cellnet")

ARGUMENTS = dict(
  root="",
  tfds="",
  tfds_split="train",
  tfds_data_dir="",
  dataset="",
  experiment="main",
  model="",
  weights="",
  resnet18_weights="",
  vgg16_weights="",
  cellnet="",
  epochs=0,
  lr=0.0,
  size=224,
  large_size=0,
  smoke=False,
)
_SMOKE_SIZE = 32


def experiment_config(arg=None, **defaults) -> config_lib.ConfigDict:
  """The config of one BioNIC experiment; `arg` is the config-file argument ('root=...,experiment=preprocess')."""
  arg = config_lib.parse_arg(arg, **{**ARGUMENTS, **defaults})
  if arg.experiment not in EXPERIMENTS:
    raise ValueError(f"experiment={arg.experiment!r}; use one of {EXPERIMENTS}.")
  if arg.experiment == "cellnet" and not arg.cellnet:
    raise ValueError(
      "experiment=cellnet compares transfer from a CellNet with ImageNet and needs cellnet=<workdir> of a finished "
      "`python -m jaxcell.pretrain --config configs/cellnet.py:width=1.0` (BioNIC's full-width ResNet-18)."
    )
  dataset = _bionic_dataset(arg)
  c = config_lib.base_config()
  _set_source(c, arg)
  if arg.smoke:
    arg.size, arg.large_size = min(arg.size, _SMOKE_SIZE), min(arg.large_size, 2 * _SMOKE_SIZE)
  c.data.image_size = arg.size
  c.data.normalization = "dataset"  # BioNIC's per-dataset statistics.
  model = arg.model or (dataset.baseline if dataset else "resnet18")
  _set_model(c, model, arg.weights or _family_weights(arg, model))
  c.model.head = "bionic_mlp"  # Linear-ReLU-BatchNorm-Linear, as BioNIC's heads.
  c.train.num_epochs = arg.epochs or (dataset and dataset.epochs) or 8  # 8: BioNIC's driver default at HEAD.
  c.train.learning_rate = arg.lr or (dataset and dataset.learning_rate) or 1e-3
  c.train.batch_size = 8
  c.augment.update(AUGMENT_ARMS["bionic"])  # RandomRotation(90) + horizontal and vertical flips.
  if dataset:
    c.protocol.max_per_class = dataset.max_per_class
    c.data.preprocess_threshold_offset = float(dataset.threshold_cutoff)
  c.arms = config_lib.ConfigDict(_arms(arg))
  if arg.smoke:
    config_lib.shrink_for_smoke(c)
    _enlarge_bionic_cnns(c)
  return c


# BioNIC's CNN_all needs inputs of >= 187 px (5 conv/pool blocks); validation refuses smaller ones.
_CNN_SMOKE_SIZE = 192
_BIONIC_CNNS = ("cnn_all", "cnn_flat")


def _enlarge_bionic_cnns(c) -> None:
  """Smoke size for BioNIC's CNNs: the whole study where the base model is one, else only the arms that train one.

  The other arms stay at the small smoke size (a VGG-16 trunk at 192 px is most of a smoke study's time)."""
  if c.model.name in _BIONIC_CNNS:
    c.data.image_size = _CNN_SMOKE_SIZE
    return
  for arm in c.arms.values():
    if arm.get("model", {}).get("name") in _BIONIC_CNNS:
      arm["data"] = {**arm.get("data", {}), "image_size": _CNN_SMOKE_SIZE}


def _bionic_dataset(arg) -> BionicDataset | None:
  name = arg.dataset or TFDS_DATASETS.get(arg.tfds, "")
  if name and name not in DATASETS:
    raise ValueError(
      f"dataset={name!r} is not one of BioNIC's datasets; use one of {sorted(DATASETS)} or leave it out."
    )
  return DATASETS.get(name)


def _set_source(c, arg) -> None:
  if arg.root and arg.tfds:
    raise ValueError("Give root=PATH (an image folder) or tfds=NAME (a tensorflow-datasets name), not both.")
  if arg.root:
    c.data.source, c.data.root = "folder", arg.root
  elif arg.tfds:
    c.data.source, c.data.tfds_name = "tfds", arg.tfds
    c.data.tfds_split, c.data.tfds_data_dir = arg.tfds_split, arg.tfds_data_dir
  else:
    c.data.source = "synthetic"  # The demo cells: every experiment runs without data of one's own.


def _set_model(c, name: str, weights: str) -> None:
  c.model.name, c.transfer.preset = MODELS.get(name, (name, ""))
  c.transfer.weights = weights


def _family_weights(arg, model: str) -> str:
  """The ImageNet weights given for a model's family (resnet18_weights=, vgg16_weights=)."""
  jaxcell_model = MODELS.get(model, (model, ""))[0]
  return {"resnet18": arg.resnet18_weights, "vgg16": arg.vgg16_weights}.get(jaxcell_model, "")


def _model_arm(arg, name: str) -> dict:
  jaxcell_model, preset = MODELS[name]
  model = {"name": jaxcell_model}
  if not preset:  # Trained end to end: the fields a preset would set go back to the defaults.
    model.update(stages=4, vgg_features=None)
  return {
    "model": model,
    "transfer": {"preset": preset, "weights": _family_weights(arg, name)},
    "train": {"frozen": ""},
  }


def _arms(arg) -> dict:
  if arg.experiment == "blog1":
    return {
      name: _model_arm(arg, name)
      for name in ("Vgg_all", "Vgg_lower", "ResNet_all", "ResNet_lower", "CNN_all", "CNN_flat")
    }
  if arg.experiment == "cellnet":  # BioNIC §2.1 / §11.2: its ResNet set-ups from ImageNet and from its CellNet.
    arms = {}
    for depth in ("all", "lower"):
      arms[f"ResNet_{depth}"] = _model_arm(arg, f"ResNet_{depth}")
      cellnet = _model_arm(arg, f"ResNet_{depth}")
      cellnet["transfer"]["weights"] = f"cellnet:{arg.cellnet}"
      arms[f"CellNet_{depth}"] = cellnet
    return arms
  if arg.experiment == "preprocess":
    return {name: {"data": {"preprocess": name}} for name in PREPROCESS_ARMS}
  if arg.experiment == "augment":
    return {name: {"augment": dict(fields)} for name, fields in AUGMENT_ARMS.items()}
  if arg.experiment == "image_size":  # BioNIC's blog3: Resize 224 vs CenterCrop 224 vs a larger input.
    return {
      "resize": {"data": {"image_size": arg.size, "resize": "resize"}},
      "center_crop": {"data": {"image_size": arg.size, "resize": "center_crop"}},
      "large": {"data": {"image_size": arg.large_size or 2 * arg.size, "resize": "resize"}},
    }
  return {}
