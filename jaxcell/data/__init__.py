"""Data: image folders and the synthetic demo set as one in-memory `Dataset`, and protocol splits."""

from jaxcell.data.dataset import Dataset, SkippedFile
from jaxcell.data.loading import load_dataset
from jaxcell.data.folder import read_image_folder
from jaxcell.data.splits import Splits, fold_indices, make_splits, subsample_per_class
from jaxcell.data.synthetic import make_synthetic_cells

__all__ = [
  "Dataset",
  "SkippedFile",
  "Splits",
  "fold_indices",
  "load_dataset",
  "make_splits",
  "make_synthetic_cells",
  "read_image_folder",
  "subsample_per_class",
]
