"""The linear probe that says, while pretraining runs, whether its features are getting more useful.

Frozen pooled features of the held-out images (never trained on) are fitted by least squares to the collection's
class labels on one half of them and scored on the other half, then the halves swap (2-fold, stratified). A
channel-identity backbone sees one channel at a time, so a site's feature is the mean of its channels' features.
The score is accuracy, beside the chance level (the largest class's share).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcell.pretraining import objectives
from jaxcell.training import augment as augment_lib
from jaxcell.training import head_training, lsr_probe, trainer


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(training indices, held-out indices): per class floor(fraction * n) images (at least one of a class with two
  or more), drawn once from the seed; sorted."""
  rng = np.random.default_rng(seed)
  held = []
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    k = max(1, int(fraction * len(members))) if len(members) >= 2 else 0
    held += rng.choice(members, k, replace=False).tolist()
  held = np.sort(np.array(held, np.int64))
  return np.setdiff1d(np.arange(len(labels)), held), held


def halves(labels: np.ndarray) -> np.ndarray:
  """0/1 per image: alternate images of each class go to each half (deterministic, stratified)."""
  half = np.zeros(len(labels), np.int64)
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    half[members[1::2]] = 1
  return half


def features(model, variables, images: np.ndarray, mean, std, objective: str, batch_size: int) -> np.ndarray:
  """Pooled features [N, D] of uint8 images [N, H, W, C] in eval mode (per-channel mean for channel identity)."""
  none = augment_lib.AugmentConfig()

  def pooled(x: np.ndarray) -> np.ndarray:
    data = trainer.DeviceData(
      images=jnp.asarray(x), labels=jnp.zeros(len(x), jnp.int32), mean=jnp.asarray(mean), std=jnp.asarray(std)
    )
    return np.asarray(head_training.extract_features(model, variables, data, jax.random.key(0), none, 1, batch_size))

  if objective == objectives.CHANNEL_IDENTITY:
    return np.mean([pooled(images[..., c : c + 1])[:, 0] for c in range(images.shape[-1])], axis=0)
  return pooled(images)[:, 0]


def probe_accuracy(feats: np.ndarray, labels: np.ndarray, num_classes: int, l2: float) -> dict:
  """2-fold least-squares probe: {'accuracy', 'chance', 'images'}; accuracy None with fewer than 2 classes."""
  labels = np.asarray(labels)
  chance = float(np.bincount(labels, minlength=num_classes).max() / len(labels))
  if len(np.unique(labels)) < 2:
    return {"accuracy": None, "chance": chance, "images": int(len(labels))}
  half, correct = halves(labels), 0
  for fit in (0, 1):
    train, test = half == fit, half != fit
    w, b = lsr_probe.lsr_probe(jnp.asarray(feats[train]), jnp.asarray(labels[train]), num_classes, l2)
    scores = np.asarray(lsr_probe.lsr_scores(jnp.asarray(feats[test]), w, b))
    correct += int((scores.argmax(-1) == labels[test]).sum())
  return {"accuracy": correct / len(labels), "chance": chance, "images": int(len(labels))}
