"""Tests for jaxcell.convert.safe_pickle and the torch-free checkpoint reader built on it: a crafted file is data.

Each attack writes a marker folder when its payload runs (os.mkdir through REDUCE), so a test fails both when the
reader accepts the file and when the payload ran before the refusal.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools

import pytest

from jaxcell.convert import readers, safe_pickle


class _Payload:
  """Pickles as a call of os.mkdir(marker): what a crafted checkpoint would run."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.mkdir, (self.marker,)


class _NewObj:
  """Pickles with NEWOBJ (protocol >= 2) and BUILD of its __dict__."""

  def __init__(self):
    self.x = 1


PLAIN = {
  "ints": [0, 1, -1, 255, 256, 65535, 2**31 - 1, -(2**31), 2**70, -(2**70)],
  "floats": (0.0, -1.5, 1e300, float("inf")),
  "text": ["", "a", "ü" * 300, "x" * 70000],
  "nested": {"t": (), "t1": (1,), "t2": (1, 2), "t3": (1, 2, 3), "t4": (1, 2, 3, 4), "l": [[], [[1]]]},
  "consts": [None, True, False],
  7: "non-string key",
}


# Protocols 0-2 pickle bytes and sets as calls of builtins (refused: no global is allowed by default).
NATIVE_FROM_3 = {"bytes": [b"", b"\x00\xff", bytes(300)]}
NATIVE_FROM_4 = {"sets": [{1, 2}, frozenset({"a"})]}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_reads_as_pickle_reads_it(protocol):
  shared = [1, 2]
  value = dict(PLAIN, shared=(shared, shared))  # The memo: one list referenced twice.
  value.update(NATIVE_FROM_3 if protocol >= 3 else {})
  value.update(NATIVE_FROM_4 if protocol >= 4 else {})
  data = pickle.dumps(value, protocol=protocol)
  got = safe_pickle.read_pickle(io.BytesIO(data))
  assert got == pickle.loads(data)
  assert got["shared"][0] is got["shared"][1]


def test_stream_position_is_left_after_stop():
  stream = io.BytesIO(pickle.dumps(1, protocol=2) + pickle.dumps("two", protocol=2) + b"raw bytes")
  assert safe_pickle.read_pickle(stream) == 1
  assert safe_pickle.read_pickle(stream) == "two"
  assert stream.read() == b"raw bytes"


def test_allowed_globals_resolve_and_are_the_only_callables():
  data = pickle.dumps(collections.OrderedDict(a=1, b=2), protocol=2)
  allowed = {("collections", "OrderedDict"): collections.OrderedDict}
  got = safe_pickle.read_pickle(io.BytesIO(data), allowed)
  assert type(got) is collections.OrderedDict and list(got.items()) == [("a", 1), ("b", 2)]
  with pytest.raises(ValueError, match="refusing to load collections.OrderedDict"):
    safe_pickle.read_pickle(io.BytesIO(data))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_payload_is_refused_before_it_runs(tmp_path, protocol):
  marker = tmp_path / "ran"
  data = pickle.dumps({"weights": [_Payload(marker)]}, protocol=protocol)
  with pytest.raises(ValueError, match=r"refusing to load (posix|os)\.mkdir"):
    safe_pickle.read_pickle(io.BytesIO(data), what="evil.pth")
  assert not marker.exists()


def test_an_allowed_name_cannot_smuggle_a_call(tmp_path):
  """REDUCE only calls objects from the allowed table, whatever the stream put on the stack."""
  data = pickle.dumps(_NewObj(), protocol=2)
  assert "NEWOBJ" in {op.name for op, _, _ in pickletools.genops(data)}
  with pytest.raises(ValueError, match="refusing to load"):
    safe_pickle.read_pickle(io.BytesIO(data))
  allowed = {(__name__, "_NewObj"): _NewObj, ("copyreg", "__newobj__"): None}
  with pytest.raises(ValueError, match="refusing pickle opcode NEWOBJ"):
    safe_pickle.read_pickle(io.BytesIO(data), allowed)
  # A hand-written REDUCE of a string constant (not an allowed object) is refused too.
  with pytest.raises(ValueError, match="not an allowed callable"):
    safe_pickle.read_pickle(io.BytesIO(b"\x80\x02X\x05\x00\x00\x00mkdir)R."))


def test_persistent_ids_need_a_loader():
  class Storage:
    pass

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", "key") if isinstance(obj, Storage) else None

  buffer = io.BytesIO()
  Pickler(buffer, protocol=2).dump([Storage()])
  with pytest.raises(ValueError, match="refusing a persistent id"):
    safe_pickle.read_pickle(io.BytesIO(buffer.getvalue()))
  assert safe_pickle.read_pickle(io.BytesIO(buffer.getvalue()), persistent_load=lambda pid: pid[1]) == ["key"]


@pytest.mark.parametrize("data", [b"", b"\x80\x02K\x01", b"\x80\x02K\x01K\x02.", b"\x80\x02h\x07."])
def test_truncated_or_garbled_streams_are_clear_errors(data):
  with pytest.raises(ValueError, match="x.pth: (not a readable pickle|malformed pickle)"):
    safe_pickle.read_pickle(io.BytesIO(data), what="x.pth")


def _legacy_checkpoint(path, magic=readers.LEGACY_MAGIC, protocol=readers.LEGACY_PROTOCOL, sys_info=None, tree=None,
                       keys=None):  # fmt: skip
  """A legacy-format torch.save stream: magic, protocol, sys info, object tree, storage keys (no storages)."""
  sys_info = {"protocol_version": 1001, "little_endian": True} if sys_info is None else sys_info
  with open(path, "wb") as f:
    for part in (
      magic,
      protocol,
      sys_info,
      collections.OrderedDict() if tree is None else tree,
      [] if keys is None else keys,
    ):
      pickle.dump(part, f, protocol=2)


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "tree", "keys"])
def test_legacy_checkpoint_parts_never_run_code(tmp_path, where):
  """Issue: the legacy reader used plain pickle.load for the header and the key list; each part is attacked."""
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  _legacy_checkpoint(path, **{where: _Payload(marker)})
  # A refused magic number reads as "not a torch checkpoint"; every later part names the refused global.
  with pytest.raises(ValueError, match="is not a torch.save checkpoint" if where == "magic" else "refusing to load"):
    readers.read_state_dict(path, use_torch=False)
  assert not marker.exists()


def test_an_empty_legacy_state_dict_reads_without_torch(tmp_path):
  _legacy_checkpoint(tmp_path / "empty.pth", keys=[])
  assert readers.read_state_dict(tmp_path / "empty.pth", use_torch=False) == {}
  _legacy_checkpoint(tmp_path / "bad.pth", keys=["0"])
  with pytest.raises(ValueError, match="storage '0' has bytes but no tensor uses it"):
    readers.read_state_dict(tmp_path / "bad.pth", use_torch=False)
