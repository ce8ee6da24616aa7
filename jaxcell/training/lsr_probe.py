"""The closed-form least-squares (ridge) linear probe on frozen features: every lane solved at once, no training loop.

`lsr_probe` / `lsr_probe_lanes` fit a ridge regression from features to one-hot labels in closed form (the idea of
big_vision's few-shot linear evaluator, written from scratch). `lsr_probes` fits one probe per lane of a study arm on
its cached features (training/cached_heads.py), scored as arm '<arm>_lsr'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell.training import trainer

_HIGHEST = jax.lax.Precision.HIGHEST  # Closed-form solves need full float32 matmuls (no TF32/bf16 passes on GPU).


def _ridge(x: jax.Array, targets: jax.Array, weights: jax.Array, l2_reg: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ridge regression on rows with 0/1 `weights` and an unpenalised intercept; returns (W [D, C], b [C]).

  Centring with the weighted means removes the intercept from the penalty. Zero-weight rows become zero rows, which
  leave X^T X unchanged and, in the M x M (dual) system, get coefficient 0 / l2_reg = 0: padding never matters.
  """
  count = jnp.sum(weights)
  x_mean = jnp.matmul(weights, x, precision=_HIGHEST) / count
  t_mean = jnp.matmul(weights, targets, precision=_HIGHEST) / count
  xc = (x - x_mean) * weights[:, None]
  tc = (targets - t_mean) * weights[:, None]
  m, d = x.shape
  if d <= m:  # Primal: (Xc^T Xc + l I) W = Xc^T T.
    w = _solve_shifted(jnp.matmul(xc.T, xc, precision=_HIGHEST), l2_reg, jnp.matmul(xc.T, tc, precision=_HIGHEST))
  else:  # Dual: W = Xc^T (Xc Xc^T + l I)^-1 T, the same solution through the smaller system.
    w = jnp.matmul(xc.T, _solve_shifted(jnp.matmul(xc, xc.T, precision=_HIGHEST), l2_reg, tc), precision=_HIGHEST)
  return w, t_mean - jnp.matmul(x_mean, w, precision=_HIGHEST)


def _solve_shifted(gram: jax.Array, l2_reg: jax.Array, rhs: jax.Array) -> jax.Array:
  """(gram + l2 I)^-1 rhs for a symmetric PSD gram, through its eigendecomposition.

  A Cholesky solve returns NaN once float32 rounding makes gram + l2 I look indefinite (measured: 1280-d ImageNet
  features of 550 images with l2 = 1e-3); eigenvalues clipped at 0 keep the shifted system exactly invertible.
  """
  values, vectors = jnp.linalg.eigh(gram)
  inverse = 1.0 / (jnp.maximum(values, 0.0) + l2_reg)
  return jnp.matmul(vectors * inverse, jnp.matmul(vectors.T, rhs, precision=_HIGHEST), precision=_HIGHEST)


def _check_probe_inputs(features, labels, num_classes: int, l2_reg) -> None:
  if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
    raise ValueError(f"Need features [N, D] and labels [N]; got shapes {features.shape} and {labels.shape}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if not isinstance(l2_reg, jax.core.Tracer) and not float(l2_reg) > 0:
    raise ValueError(f"l2_reg must be > 0 (it keeps the closed-form system invertible), got {l2_reg}.")
  if not isinstance(labels, jax.core.Tracer):
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"labels must lie in [0, {num_classes}); got values {values.min()}..{values.max()}.")


def _float(x) -> jax.Array:
  return jnp.asarray(x, jnp.result_type(float))  # float32, or float64 under jax_enable_x64.


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _probe(features, labels, num_classes, l2_reg):
  targets = jax.nn.one_hot(labels, num_classes, dtype=features.dtype)
  return _ridge(features, targets, jnp.ones(features.shape[0], features.dtype), l2_reg)


def lsr_probe(features: jax.Array, labels: jax.Array, num_classes: int, l2_reg: float) -> tuple[jax.Array, jax.Array]:
  """Ridge regression of one-hot labels on features [M, D] with an unpenalised intercept: (W [D, C], b [C]).

  The same solution as sklearn's Ridge(alpha=l2_reg, fit_intercept=True) on one-hot targets, solved through the
  D x D or the M x M system, whichever is smaller.
  """
  features, labels = _float(features), jnp.asarray(labels, jnp.int32)
  _check_probe_inputs(features, labels, num_classes, l2_reg)
  return _probe(features, labels, num_classes, l2_reg)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _probe_lanes(features, labels, train_idx, mask, num_classes, l2_reg):
  def lane(idx, weights):
    targets = jax.nn.one_hot(labels[idx], num_classes, dtype=features.dtype)
    return _ridge(features[idx], targets, weights, l2_reg)

  return jax.vmap(lane)(train_idx, mask.astype(features.dtype))


def lsr_probe_lanes(
  features: jax.Array, labels: jax.Array, train_idx: jax.Array, mask: jax.Array, num_classes: int, l2_reg: float
) -> tuple[jax.Array, jax.Array]:
  """`lsr_probe` for every lane at once: W [L, D, C], b [L, C].

  `train_idx` [L, M] are indices into features [N, D] / labels [N], padded to a common M; `mask` [L, M] is True for
  real rows (for engine.stack_lane_data output: `lanes.weights > 0`). Masked rows change nothing.
  """
  features, labels = _float(features), jnp.asarray(labels, jnp.int32)
  _check_probe_inputs(features, labels, num_classes, l2_reg)
  train_idx, mask = jnp.asarray(train_idx, jnp.int32), jnp.asarray(mask)
  if train_idx.ndim != 2 or mask.shape != train_idx.shape:
    raise ValueError(f"Need train_idx and mask of the same shape [L, M]; got {train_idx.shape} and {mask.shape}.")
  if not isinstance(mask, jax.core.Tracer) and not np.all(np.asarray(mask).sum(axis=1) > 0):
    raise ValueError("Every lane needs at least one unmasked row; drop lanes without training images.")
  if not isinstance(train_idx, jax.core.Tracer):
    idx = np.asarray(train_idx)
    if idx.size and (idx.min() < 0 or idx.max() >= features.shape[0]):
      raise ValueError(f"train_idx must lie in [0, {features.shape[0]}); got {idx.min()}..{idx.max()}.")
  return _probe_lanes(features, labels, train_idx, mask, num_classes, l2_reg)


def lsr_scores(features: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """Regression scores: features [N, D] with (W [D, C], b [C]) -> [N, C], or with (W [L, D, C], b [L, C]) -> [L, N, C]."""
  return jnp.matmul(_float(features), w, precision=_HIGHEST) + b[..., None, :]


def scores_to_probs(scores: jax.Array) -> jax.Array:
  """Softmax of least-squares scores over classes.

  The scores estimate one-hot targets, not log-odds, so these are not calibrated probabilities: use them for
  rankings (argmax accuracy, ROC-AUC, top-k), not for calibration or log-loss.
  """
  return jax.nn.softmax(scores, axis=-1)


# --- one probe per lane of a study arm ------------------------------------------------------------


class LsrProbes:
  """Per-lane closed-form probes on un-augmented features; `probs(row, idx)` scores images for lane `row`."""

  def __init__(self, feats, w, b, scale):
    self.feats, self.w, self.b, self.scale = feats, w, b, scale

  def probs(self, row: int, idx: np.ndarray) -> np.ndarray:
    scores = lsr_scores(self.feats[jnp.asarray(idx)] / self.scale, self.w[row], self.b[row])
    return np.asarray(scores_to_probs(scores))


def lsr_probes(feats, labels, stacked: trainer.LaneData, num_classes: int, l2: float, cv_pool) -> LsrProbes:
  # One scale for all features (from the CV pool, never the holdout) so lsr_l2 means the same across models.
  scale = float(jnp.std(feats[jnp.asarray(cv_pool)])) or 1.0
  w, b = lsr_probe_lanes(feats / scale, labels, stacked.train_idx, stacked.weights > 0, num_classes, l2)
  return LsrProbes(feats, w, b, scale)
