"""Confusion matrices summed per arm and split, as markdown for summary.md."""

from __future__ import annotations

from jaxcell.workdir import confusion


def summed_markdown(csv_path: str, class_names) -> str:
  """Markdown tables of the confusion counts summed over every model, per arm and split."""
  sums = confusion.summed_confusion(csv_path, class_names)
  if not sums:
    return ""
  lines = ["## Confusion matrices (summed over models; rows = true class, columns = predicted)", ""]
  for (arm, split), m in sorted(sums.items()):
    lines += [
      f"### {arm} — {split}",
      "",
      "| true \\ predicted | " + " | ".join(class_names) + " |",
      "|---" * (len(class_names) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(v) for v in m[i]) + " |" for i, name in enumerate(class_names)]
    lines.append("")
  return "\n".join(lines)
