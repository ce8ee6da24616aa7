"""BioNIC's question 2 on the demo cells: does a CellNet transfer better than ImageNet, or than no pretraining?
Arms of one study on matched lanes (the same folds, seeds and draws), at several training-set sizes, so every
comparison in comparisons.md and report.html is paired.

  python -m jaxcell.pretrain --config configs/cellnet.py --workdir runs/cellnet                       # minutes
  python -m jaxcell.main --config configs/cellnet_transfer.py:cellnet=runs/cellnet --workdir runs/cellnet_transfer

Arms:
  scratch         a quarter-width ResNet-18 from random init, every layer trained (the demo's scratch arm)
  cellnet         the same network starting from the CellNet's trunk (its stem adapted to RGB), every layer
                  trained: paired with scratch, the effect of CellNet pretraining alone
  cellnet_probe   the CellNet trunk frozen, a linear head per model on cached features (+ the LSR probe)
  imagenet_probe  EfficientNet-Lite0 with its ImageNet weights frozen, a linear head per model (+ the LSR probe):
                  the ImageNet weights that install offline (converted torchvision ResNet-18 weights can replace
                  them with imagenet=PATH, which fine-tunes a full-width ResNet-18 instead)

Arguments after ':' (comma separated): cellnet=DIR (a finished pretraining workdir; required), imagenet=PATH,
sizes=5/10/20/all (training images per class), repeats=N, smoke.
"""

from jaxcell import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, cellnet="", imagenet="", sizes="5/10/20/all", repeats=1, smoke=False)
  if not arg.cellnet:
    raise ValueError("configs/cellnet_transfer.py needs cellnet=<pretraining workdir> (python -m jaxcell.pretrain).")
  c = config_lib.demo_cells_study(arg.repeats)  # Its quarter-width ResNet-18 is configs/cellnet.py's default.
  c.protocol.n_per_class = tuple(None if s == "all" else int(s) for s in arg.sizes.split("/"))
  cellnet = f"cellnet:{arg.cellnet}"
  imagenet = (
    {"model": {"width": 1.0}, "transfer": {"weights": arg.imagenet}, "data": {"normalization": "weights"}}
    if arg.imagenet
    else {
      "model": {"name": "efficientnet_lite0", "width": 1.0},
      "transfer": {"weights": "builtin:efficientnet_lite0", "preset": "linear_probe"},
      "data": {"normalization": "weights"},
    }
  )
  c.arms = {
    "scratch": {},
    "cellnet": {"transfer": {"weights": cellnet}, "data": {"normalization": "weights"}},
    "cellnet_probe": {"transfer": {"weights": cellnet, "preset": "linear_probe"}, "data": {"normalization": "weights"}},
    "imagenet_probe": imagenet,
  }
  if arg.smoke:
    config_lib.shrink_for_smoke(c)
    c.model.width = 0.125  # configs/cellnet.py:smoke's width.
    c.protocol.n_per_class = (3, None)
  return c
