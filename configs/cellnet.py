"""Pretraining a CellNet (BioNIC's question 2): one backbone on a large cell-image collection, for studies to
transfer from (`--config.transfer.weights=cellnet:<workdir>`; configs/cellnet_transfer.py).

  python -m jaxcell.pretrain --config configs/cellnet.py --workdir runs/cellnet                 # synthetic, CPU
  python -m jaxcell.pretrain --config configs/cellnet.py:root=/data/rxrx19a_sites,channels=5,pattern='{well}_s{site}_w{channel}.png' \
    --workdir gs://my-bucket/cellnet                                                            # RxRx-style sites
  python -m jaxcell.pretrain --config configs/cellnet.py:smoke --workdir runs/cellnet_smoke     # seconds

Arguments after ':' (comma separated):
  objective=channel_identity | supervised | self_supervised   (default channel_identity, BioNIC's task)
  root=FOLDER      the collection (root/<class>/<image>; multi-channel TIFFs or per-channel files); default: the
                   synthetic screening collection (20,000 images of 8 phenotypes the demo does not have)
  channels=N       channels per image (default 5, as RxRx19a); pattern=... groups per-channel files
  steps=N, batch=N, size=N (image side, px), model=NAME, width=W (must match the studies that transfer from it)
  smoke            a seconds-long run that exercises every stage
"""

from jaxcell import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(
    arg,
    objective="channel_identity",
    root="",
    channels=5,
    pattern="",
    steps=1500,
    batch=128,
    size=64,
    model="resnet18",
    width=0.25,
    smoke=False,
  )
  c = config_lib.pretrain_config()
  if arg.root:
    c.data.source, c.data.root = "folder", arg.root
  else:  # 8 x 2500 = 20,000 synthetic screen images, none of the demo's classes (data/synthetic.py).
    c.data.source = "synthetic"
    c.data.synthetic.collection = "screen"
    c.data.synthetic.images_per_class = 2500
  c.data.channels = arg.channels
  c.data.channel_pattern = arg.pattern
  c.data.image_size = arg.size
  c.model.name = arg.model
  c.model.width = arg.width  # A quarter-width ResNet-18 by default: the demo's scratch model, so it can transfer.
  c.pretrain.objective = arg.objective
  c.pretrain.num_steps = arg.steps
  c.pretrain.batch_size = arg.batch
  c.pretrain.learning_rate = 2e-3
  c.pretrain.warmup_steps = min(100, arg.steps // 10)
  c.pretrain.probe_every_steps = 250
  c.augment.rotation_degrees = 90.0
  if arg.objective == "self_supervised":  # SimCLR needs strong views: crops and intensity jitter.
    c.augment.crop_scale = (0.35, 1.0)
    c.augment.brightness = 0.4
    c.augment.contrast = 0.4
  if arg.smoke:
    c.data.image_size = min(c.data.image_size, 32)
    c.data.synthetic.images_per_class = min(c.data.synthetic.images_per_class, 12)
    c.model.width = min(c.model.width, 0.125)
    c.pretrain.num_steps = 6
    c.pretrain.batch_size = 8
    c.pretrain.steps_per_chunk = 2
    c.pretrain.warmup_steps = 1
    c.pretrain.probe_every_steps = 4
    c.pretrain.checkpoint_every_steps = 2
    c.pretrain.log_every_steps = 2
    c.pretrain.holdout_fraction = 0.25
  return c
