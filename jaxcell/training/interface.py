"""The contract between a study and its training paths: what an arm hands in, and what comes back.

Both paths — the full model (training/full_model.py) and heads on cached trunk features (training/cached_heads.py)
— take an `ArmSetup` and a plan of lanes, and return a `FitResult` whose `predictors` score any images for any lane
of the plan, each under the arm name its results are recorded as.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from jaxcell.training import lanes as lanes_lib
from jaxcell.training import trainer

# (lane, its training indices into the dataset, its step budget), one per lane an arm still has to train.
PlanItem = tuple[lanes_lib.Lane, np.ndarray, int]
# predictor(row, idx): class probabilities [len(idx), C] (numpy) of plan row `row`'s model on dataset images idx.
Predictor = Callable[[int, np.ndarray], np.ndarray]


@dataclasses.dataclass
class ArmSetup:
  """What training needs of a study arm: built once, shared by every lane of the arm (study arms extend it)."""

  name: str
  config: ml_collections.ConfigDict  # The arm's full config (study config with the arm's overrides).
  model: nn.Module
  init: Callable[[Any], dict]  # Compiled key -> variables (converted weights overlaid, if any).
  frozen: dict  # Frozen parameters, identical for every lane of the arm.
  data: trainer.DeviceData  # The study's images with this arm's normalisation.


@dataclasses.dataclass
class FitResult:
  """What a training path returns for the lanes of its plan."""

  states: list[trainer.TrainState]  # Each lane's final state, on the host, in plan order.
  record: dict  # What ran (engine.json): path or strategy, why, autotune trials, devices.
  predictors: dict[str, Predictor]  # {arm name as recorded in results.csv: predictor}, the arm's own first.
  diverged: dict[int, str] = dataclasses.field(default_factory=dict)  # Plan row -> why (training/divergence.py).
