"""Images whose channels are separate files, grouped into one N-channel image by a file-name pattern.

`data.channel_pattern` names the parts of a channel file's name, e.g. RxRx's `{well}_s{site}_w{channel}.png` or a
Cell Painting style `{plate}_{well}_{site}_ch{channel}.tif`. Files in one folder whose names agree on every field
but `{channel}` are the channels of one image, in the order of their channel values (numeric when every value is a
number, else alphabetical). Each channel file must be a greyscale image (8- or 16-bit) of the same size as the
others. The image's id in every record is its folder and the pattern with the other fields filled in, e.g.
`healthy/B02_s1_w{channel}.png`.

Nothing is dropped in silence: a file whose name does not fit the pattern, and every file of an image with a missing
channel, are skipped with the reason; a channel file that cannot be decoded, or whose size differs from the other
channels', makes its image a skip naming that file.
"""

from __future__ import annotations

import collections
import os
import re

import numpy as np

from jaxcell.data import decode
from jaxcell.data.dataset import SkippedFile

CHANNEL_FIELD = "channel"
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pattern_regex(pattern: str) -> re.Pattern:
  """The regex of a channel pattern: literal text as is, each {field} a named non-empty group."""
  fields = _FIELD.findall(pattern)
  if CHANNEL_FIELD not in fields:
    raise ValueError(
      f"data.channel_pattern {pattern!r} has no {{{CHANNEL_FIELD}}} field; e.g. '{{well}}_w{{channel}}.png'."
    )
  if len(fields) != len(set(fields)):
    raise ValueError(f"data.channel_pattern {pattern!r} names a field twice.")
  parts, last = [], 0
  for match in _FIELD.finditer(pattern):
    parts += [re.escape(pattern[last : match.start()]), f"(?P<{match.group(1)}>[^/]+?)"]
    last = match.end()
  parts.append(re.escape(pattern[last:]))
  return re.compile("".join(parts))


def _channel_order(values) -> list[str]:
  values = sorted(set(values))
  return sorted(values, key=int) if all(v.isdigit() for v in values) else values


def image_id(folder: str, pattern: str, fields: dict[str, str]) -> str:
  """The id of one grouped image: its folder and the pattern filled in, `{channel}` left as it is."""
  name = _FIELD.sub(lambda m: "{channel}" if m.group(1) == CHANNEL_FIELD else fields[m.group(1)], pattern)
  return f"{folder}/{name}" if folder else name


def group(candidates: list, pattern: str, channels: int) -> tuple[list, dict[str, list[str]], list[SkippedFile]]:
  """Groups (path, class, split) candidates into images: (image candidates, {image id: channel files in order},
  skipped files). Raises ValueError when the pattern finds a number of channel values other than `channels`."""
  regex = pattern_regex(pattern)
  skipped, sites = [], collections.defaultdict(dict)
  labels = {}
  for path, class_name, split in candidates:
    folder, name = os.path.split(path)
    match = regex.fullmatch(name)
    if match is None:
      skipped.append(SkippedFile(path, f"file name does not match data.channel_pattern {pattern!r}"))
      continue
    fields = match.groupdict()
    key = image_id(folder, pattern, fields)
    sites[key][fields[CHANNEL_FIELD]] = path
    labels[key] = (class_name, split)
  order = _channel_order(value for files in sites.values() for value in files)
  if sites and len(order) != channels:
    raise ValueError(
      f"data.channel_pattern {pattern!r} finds {len(order)} channel values {order[:12]} but data.channels is "
      f"{channels}; set data.channels={len(order)}, or leave the other channels' files out of the folder."
    )
  images, files_of = [], {}
  for key in sorted(sites):
    found = sites[key]
    missing = [value for value in order if value not in found]
    if missing:
      reason = f"image {key} lacks channel(s) {missing} of {order}; every channel file is needed"
      skipped += [SkippedFile(path, reason) for path in sorted(found.values())]
      continue
    files_of[key] = [found[value] for value in order]
    images.append((key, *labels[key]))
  return images, files_of, skipped


def decode_channels(
  root: str, files: list[str], image_size: int, channels: int, sixteen_bit: str, resize: str
) -> np.ndarray:
  """The channel files of one image (paths under root) as uint8 [image_size, image_size, channels].

  Raises UnreadableImageError naming the file at fault."""
  planes = []
  for path in files:
    try:
      array, _ = decode.read_array(os.path.join(root, path))
    except decode.UnreadableImageError as error:
      raise decode.UnreadableImageError(f"channel file {path}: {error}") from error
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.ndim != 2:
      raise decode.UnreadableImageError(
        f"channel file {path} has {array.shape[-1]} channels; each channel file must be one greyscale image"
      )
    if planes and array.shape != planes[0].shape:
      raise decode.UnreadableImageError(
        f"channel file {path} is {array.shape[0]}x{array.shape[1]} px, but {files[0]} is "
        f"{planes[0].shape[0]}x{planes[0].shape[1]}: the channels of one image must have one size"
      )
    planes.append(array)
  stacked = np.stack(planes, axis=-1)  # Channels of mixed types take the common type (8- and 16-bit: uint16).
  return decode.from_array(stacked, image_size, channels, sixteen_bit, resize, alpha=False)


def image_files(root: str, images, pattern: str) -> dict[str, list[str]]:
  """{image id: its channel files (paths under root) in channel order} for grouped image ids, one listing per
  folder; an id whose files are gone maps to []."""
  regex, out, folders = pattern_regex(pattern), {}, {}
  for image in images:
    folder = os.path.dirname(image)
    if folder not in folders:
      try:
        names = sorted(os.listdir(os.path.join(root, folder)))
      except OSError:
        names = []
      found = collections.defaultdict(dict)
      for name in names:
        match = regex.fullmatch(name)
        if match:
          found[image_id(folder, pattern, match.groupdict())][match[CHANNEL_FIELD]] = os.path.join(folder, name)
      folders[folder] = found
    channels = folders[folder].get(image, {})
    out[image] = [channels[value] for value in _channel_order(channels)]
  return out
