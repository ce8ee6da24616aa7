"""An augmentation study on BioNIC's protocol: one arm per policy (none, flips, rotation, bionic = rotation 90 +
flips as in BioNIC's blog1 pipeline, color_jitter, crop = random resized crop of 50-100 % area, all), matched lanes,
paired comparisons against 'none'.

  python -m jaxcell.main --config configs/bionic_augment.py:root=/data/x,dataset=blood_WBC --workdir runs/aug
  python -m jaxcell.main --config configs/bionic_augment.py:size=64,model=resnet18 --workdir runs/aug_demo  # demo cells

Takes every argument of configs/bionic.py (root=, tfds=, dataset=, model=, weights=, epochs=, lr=, size=, smoke).
BioNIC trained every model with rotation + flips (its ColorJitter() had zero strength, a no-op) and published no
augmentation comparison, so there is no BioNIC number to compare with.
"""

from jaxcell import bionic


def get_config(arg=None):
  return bionic.experiment_config(arg, experiment="augment")
