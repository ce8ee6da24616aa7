"""Reads pickled data without running any of it: a pickle opcode interpreter that builds plain values only.

    tree = read_pickle(f, allowed={("collections", "OrderedDict"): collections.OrderedDict}, persistent_load=fn)

`pickle.load` (and any `pickle.Unpickler`, however its `find_class` is restricted) executes a stream's REDUCE,
BUILD and NEWOBJ instructions with whatever callables the stream names; a crafted checkpoint then runs any command.
This module never calls the `pickle` loader. It walks the opcodes (`pickletools.genops`, which only decodes) and
interprets the data-building ones itself: numbers, strings, bytes, tuples, lists, dicts, sets, the memo, and marks.
A global (GLOBAL / STACK_GLOBAL) resolves only through the caller's `allowed` table, a call (REDUCE) runs only an
allowed callable, and BUILD never sets attributes (a mapping's extra state, such as torch's `_metadata`, is
dropped). Every other opcode — NEWOBJ, INST, OBJ, EXT*, and anything unknown — is refused with a ValueError.
"""

from __future__ import annotations

import pickletools
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

_MARK = object()  # Stands on the stack where MARK was.

# Opcodes that push their decoded argument as it is.
_PUSH_ARG = {
  "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
  "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
  "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_EMPTY = {"EMPTY_TUPLE": tuple, "EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_SET": set}
_IGNORED = {"PROTO", "FRAME"}


class _Refused(ValueError):
  pass


def read_pickle(
  file: BinaryIO,
  allowed: Mapping[tuple[str, str], Any] | None = None,
  persistent_load: Callable[[Any], Any] | None = None,
  what: str = "pickle",
) -> Any:
  """The value of the one pickle that starts at `file`'s position; the file is left just after its STOP.

  allowed: {(module, name): object} the stream may name with GLOBAL; an allowed object that is callable may be
    called by REDUCE (with positional arguments that are themselves plain data or allowed results).
  persistent_load: turns a persistent id (BINPERSID / PERSID) into a value; without it they are refused.
  what: names the stream in error messages (e.g. the checkpoint's path).
  """
  allowed = dict(allowed or {})
  stack: list[Any] = []
  memo: dict[int, Any] = {}

  def pop_mark() -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
      if stack[i] is _MARK:
        items = stack[i + 1 :]
        del stack[i:]
        return items
    raise _Refused(f"{what}: malformed pickle (no MARK).")

  def resolve(module: str, name: str) -> Any:
    if (module, name) not in allowed:
      raise _Refused(f"{what}: refusing to load {module}.{name}")
    return allowed[(module, name)]

  try:
    for opcode, arg, _ in pickletools.genops(file):
      op = opcode.name
      if op in _IGNORED:
        continue
      if op == "STOP":
        if len(stack) != 1:
          raise _Refused(f"{what}: malformed pickle (stack of {len(stack)} at STOP).")
        return stack.pop()
      if op in _PUSH_ARG:
        stack.append(bytes(arg) if op == "BYTEARRAY8" else arg)
      elif op in ("STRING", "BINSTRING", "SHORT_BINSTRING"):  # Python 2 str: ASCII text, as pickle.load reads it.
        stack.append(arg.decode("ascii") if isinstance(arg, bytes) else arg)
      elif op in _CONSTANTS:
        stack.append(_CONSTANTS[op])
      elif op in _EMPTY:
        stack.append(_EMPTY[op]())
      elif op == "MARK":
        stack.append(_MARK)
      elif op == "TUPLE":
        stack.append(tuple(pop_mark()))
      elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(op[-1])
        items = tuple(stack[-n:])
        del stack[-n:]
        stack.append(items)
      elif op == "LIST":
        stack.append(pop_mark())
      elif op == "DICT":
        items = pop_mark()
        stack.append(dict(zip(items[::2], items[1::2])))
      elif op == "FROZENSET":
        stack.append(frozenset(pop_mark()))
      elif op == "APPEND":
        value = stack.pop()
        _container(stack[-1], list, what).append(value)
      elif op == "APPENDS":
        items = pop_mark()
        _container(stack[-1], list, what).extend(items)
      elif op == "SETITEM":
        value, key = stack.pop(), stack.pop()
        _container(stack[-1], dict, what)[key] = value
      elif op == "SETITEMS":
        items = pop_mark()
        target = _container(stack[-1], dict, what)
        for key, value in zip(items[::2], items[1::2]):
          target[key] = value
      elif op == "ADDITEMS":
        items = pop_mark()
        _container(stack[-1], set, what).update(items)
      elif op in ("PUT", "BINPUT", "LONG_BINPUT"):
        memo[int(arg)] = stack[-1]
      elif op == "MEMOIZE":
        memo[len(memo)] = stack[-1]
      elif op in ("GET", "BINGET", "LONG_BINGET"):
        if int(arg) not in memo:
          raise _Refused(f"{what}: malformed pickle (memo key {arg} unset).")
        stack.append(memo[int(arg)])
      elif op == "POP":
        stack.pop()
      elif op == "POP_MARK":
        pop_mark()
      elif op == "DUP":
        stack.append(stack[-1])
      elif op == "GLOBAL":
        module, name = arg.split(" ", 1)
        stack.append(resolve(module, name))
      elif op == "STACK_GLOBAL":
        name, module = stack.pop(), stack.pop()
        stack.append(resolve(str(module), str(name)))
      elif op == "REDUCE":
        args, func = stack.pop(), stack.pop()
        if not any(func is obj for obj in allowed.values()) or not callable(func) or not isinstance(args, tuple):
          raise _Refused(f"{what}: refusing to call {func!r}: not an allowed callable.")
        stack.append(func(*args))
      elif op == "BUILD":
        state = stack.pop()
        if not isinstance(stack[-1], Mapping):  # A mapping's attribute state is dropped; anything else is an object.
          raise _Refused(f"{what}: refusing to set the state of a {type(stack[-1]).__name__} (BUILD).")
        del state
      elif op in ("BINPERSID", "PERSID"):
        if persistent_load is None:
          raise _Refused(f"{what}: refusing a persistent id (not expected in this stream).")
        stack.append(persistent_load(stack.pop() if op == "BINPERSID" else arg))
      else:  # NEWOBJ, NEWOBJ_EX, INST, OBJ, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER, PERSID variants...
        raise _Refused(f"{what}: refusing pickle opcode {op} (it builds objects, not data).")
  except _Refused:
    raise
  except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:  # Truncated or garbled stream.
    raise ValueError(f"{what}: not a readable pickle ({type(e).__name__}: {e}).") from None
  raise ValueError(f"{what}: the pickle ends before its STOP; the file is truncated.")


def _container(obj: Any, kind: type, what: str) -> Any:
  if not isinstance(obj, kind):
    raise _Refused(f"{what}: malformed pickle ({kind.__name__} operation on a {type(obj).__name__}).")
  return obj
