"""BioNIC's pre-processing study (its blog2): one arm per variant (none, erode, sobel_otsu, sobel_mean, tophat_otsu,
tophat_mean, clahe, lbp) on the dataset's baseline model, matched lanes, paired comparisons against 'none'.

  python -m jaxcell.main --config configs/bionic_preprocess.py:root=/data/CHO_images,dataset=CHO_images --workdir runs/pp
  python -m jaxcell.main --config configs/bionic_preprocess.py:size=64,model=resnet18 --workdir runs/pp_demo  # demo cells

Takes every argument of configs/bionic.py (root=, tfds=, dataset=, model=, weights=, epochs=, lr=, size=, smoke).
BioNIC's CHO_images result to compare with (VGG16 frozen features, 15 epochs; medians of 20 test folds): none 0.97,
erode 0.93, sobel_otsu 0.85, sobel_mean 0.53, tophat_otsu 0.93, tophat_mean 0.27, clahe 0.96.
"""

from jaxcell import bionic


def get_config(arg=None):
  return bionic.experiment_config(arg, experiment="preprocess")
