"""The pretraining objectives: from one step's sampled images to the model's inputs, targets and loss.

- `channel_identity` (BioNIC §2.1, its CellNet task on RxRx19a): each channel of a multi-channel site becomes a
  one-channel image labelled by which channel it is (N classes). The backbone is a one-channel model.
- `supervised`: the collection's own labels (its folder names), cross-entropy.
- `self_supervised`: SimCLR — Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of
  Visual Representations", ICML 2020 (arXiv:2002.05709). Two augmented views of every image, a projection MLP on
  the pooled features, and the NT-Xent loss: each view must pick out its partner among the 2B - 1 other views of
  the global batch. Chosen over BYOL / DINO because it needs no second (teacher / momentum) network, so the state to
  shard, checkpoint and transfer is one backbone, and because its one ingredient besides the loss is the on-device
  augmentation jaxcell already has; its known cost, needing large batches, is what the data-parallel path gives.

Everything here is a pure function of arrays, so the step is one jit-compiled program whatever the objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

CHANNEL_IDENTITY, SUPERVISED, SELF_SUPERVISED = "channel_identity", "supervised", "self_supervised"


def input_channels(objective: str, channels: int) -> int:
  """Channels of the backbone's input: one for channel identity, else the images' own."""
  return 1 if objective == CHANNEL_IDENTITY else channels


def num_outputs(objective: str, channels: int, num_classes: int, projection_dim: int) -> int:
  """Width of the pretraining head: channels (channel identity), classes (supervised) or the projection."""
  return {CHANNEL_IDENTITY: channels, SUPERVISED: num_classes, SELF_SUPERVISED: projection_dim}[objective]


def channel_identity_batch(key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One random channel of each site [B, H, W, N] as a one-channel image [B, H, W, 1], labelled by its index."""
  channel = jax.random.randint(key, (images.shape[0],), 0, images.shape[-1])
  picked = jnp.take_along_axis(images, channel[:, None, None, None], axis=-1)
  return picked, channel.astype(jnp.int32)


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, accuracy)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def nt_xent_loss(projections: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """SimCLR's NT-Xent loss of [2B, D] projections, rows i and i + B being the two views of one image.

  Returns (mean loss over the 2B views, the fraction of views whose most similar other view is their partner)."""
  z = projections.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n = z.shape[0]
  half = n // 2
  similarity = (z @ z.T) / temperature
  similarity = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, similarity)  # A view is not its own partner.
  partner = (jnp.arange(n) + half) % n
  loss = optax.softmax_cross_entropy_with_integer_labels(similarity, partner).mean()
  return loss, jnp.mean(jnp.argmax(similarity, -1) == partner)
