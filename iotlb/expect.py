"""What an operation answered, and what a trace expected it to answer.

An *outcome* is what userspace (and a kprobe) can see of one operation of a trace, the
same whether the operation ran on a real ``/dev/vhost-vdpa-N`` (:mod:`iotlb.conform`)
or on the model (:func:`observe`):

==========  ==========================================================================
``ret``     the call's return: bytes written for a ``write()``, 0 for an ioctl, None
            on failure
``errno``   the errno name on failure (``EOPNOTSUPP``, never Python's ``ENOTSUP``
            alias: both are 95), else None
``value``   what a GET ioctl returned (an int, or ``[first, last]``), else None
``vmpin``   ``VmPin`` of the owner after the op, in pages (``mm->pinned_vm``)
``handler`` for a message: the errno name ``vhost_vdpa_process_iotlb_msg`` returned,
            0 for success, None when the message never reached it (rejected by
            ``vhost_chr_write_iter`` first); absent for other ops
``parent``  the parent (``vdpa_config_ops``) calls the op caused, as strings such as
            ``dma_map(0, 0x1000, 0x1000, 0x5000, 3)``
==========  ==========================================================================

An expectation (``"expect"`` in a trace line) holds a subset of these keys; only the
keys present are checked.

>>> mismatches({"errno": "EFAULT", "handler": "ENOSPC"},
...            {"ret": None, "errno": "EFAULT", "handler": "EINVAL", "vmpin": 0})
[('handler', 'ENOSPC', 'EINVAL')]
"""
from __future__ import annotations

import errno as _errno
from typing import Any, Dict, List, Optional, Tuple

from .errors import IOTLBError

__all__ = ["KEYS", "PARENT_OPS", "errno_name", "errno_number", "parse_expect",
           "expect_to_json", "ParentLog", "observe", "mismatches", "format_mismatch"]

#: The keys an expectation may hold, in the order they are reported.
KEYS = ("ret", "errno", "value", "vmpin", "handler", "parent")

#: The parent ops recorded (and probed on a real kernel), with the arguments kept.
PARENT_OPS = {
    "set_map": ("asid",),
    "dma_map": ("asid", "iova", "size", "pa", "perm"),
    "dma_unmap": ("asid", "iova", "size"),
    "reset_map": ("asid",),
    "compat_reset": ("flags",),
    "reset": (),
    "set_group_asid": ("group", "asid"),
    "suspend": (),
    "resume": (),
}

_CANONICAL = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN",
              _errno.EDEADLK: "EDEADLK"}


def errno_name(number: Optional[int]) -> Optional[str]:
    """The kernel's name of an errno number (None stays None; 0 stays 0).

    >>> errno_name(95), errno_name(14), errno_name(None), errno_name(0)
    ('EOPNOTSUPP', 'EFAULT', None, 0)
    """
    if number is None or number == 0:
        return number
    return _CANONICAL.get(number) or _errno.errorcode.get(number, str(number))


def errno_number(name) -> Optional[int]:
    """The number of an errno name (or number); None and 0 stay as they are.

    >>> errno_number("ENOTSUP") == errno_number("EOPNOTSUPP") == 95
    True
    """
    if name is None or name == 0:
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    if isinstance(name, str) and name.isupper() and isinstance(getattr(_errno, name, None), int):
        return getattr(_errno, name)
    raise ValueError(f"unknown errno {name!r}")


def _norm_errno(key: str, value):
    n = errno_number(value)
    return errno_name(n)


def parse_expect(obj: Any) -> Dict[str, Any]:
    """Validate an ``"expect"`` object; errno names are made canonical.

    >>> parse_expect({"errno": "ENOTSUP", "vmpin": 3})
    {'errno': 'EOPNOTSUPP', 'vmpin': 3}
    >>> parse_expect({"erno": 1})
    Traceback (most recent call last):
    ...
    ValueError: field 'expect' has no key 'erno' (keys: ret, errno, value, vmpin, handler, parent)
    """
    if not isinstance(obj, dict):
        raise ValueError("field 'expect' must be an object")
    out: Dict[str, Any] = {}
    for key, value in obj.items():
        if key not in KEYS:
            raise ValueError(f"field 'expect' has no key {key!r} (keys: {', '.join(KEYS)})")
        if key in ("errno", "handler"):
            try:
                out[key] = _norm_errno(key, value)
            except ValueError as exc:
                raise ValueError(f"field 'expect': {key}: {exc}") from None
        elif key == "parent":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("field 'expect': parent must be a list of strings")
            out[key] = list(value)
        elif key == "value":
            if isinstance(value, list):
                out[key] = [int(v, 0) if isinstance(v, str) else v for v in value]
            else:
                out[key] = int(value, 0) if isinstance(value, str) else value
        else:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"field 'expect': {key} must be an integer or null")
            out[key] = value
    return out


def expect_to_json(expect: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON form of an expectation (keys in :data:`KEYS` order; big values hex).

    >>> expect_to_json({"value": [4096, 2**64 - 1], "ret": 0})
    {'ret': 0, 'value': ['0x1000', '0xffffffffffffffff']}
    """
    out: Dict[str, Any] = {}
    for key in KEYS:
        if key not in expect:
            continue
        value = expect[key]
        if key == "value" and isinstance(value, list):
            value = [hex(v) for v in value]
        elif key == "value" and isinstance(value, int) and value > 0xffff:
            value = hex(value)
        out[key] = value
    return out


def format_parent(name: str, args: Tuple[int, ...]) -> str:
    """One parent call as a string (numbers past 9 in hex).

    >>> format_parent("dma_map", (0, 0x1000, 0x1000, 0x5000, 3))
    'dma_map(0, 0x1000, 0x1000, 0x5000, 3)'
    """
    return f"{name}({', '.join(str(a) if a < 10 else hex(a) for a in args)})"


class ParentLog:
    """Records the parent ops a model device calls, as :data:`PARENT_OPS` strings.

    It wraps the ops present on ``backend`` (instance attributes shadowing the class's,
    so every caller, compiled or not, goes through them) and leaves absent ops absent.

    >>> from iotlb.backend import Backend
    >>> class P(Backend):
    ...     def reset(self): pass
    ...     def set_map(self, asid, tlb): pass
    ...     def device_iotlb(self, asid): return None
    >>> p = P(); log = ParentLog(p)
    >>> p.set_map(0, None); p.reset(); log.take(), hasattr(p, "dma_map")
    (['set_map(0)', 'reset()'], False)
    """

    def __init__(self, backend) -> None:
        self.calls: List[str] = []
        for name, fields in PARENT_OPS.items():
            fn = getattr(backend, name, None)
            if fn is not None:
                setattr(backend, name, self._wrap(name, len(fields), fn))

    def _wrap(self, name: str, nargs: int, fn):
        calls = self.calls

        def op(*args):
            calls.append(format_parent(name, tuple(int(a) for a in args[:nargs])))
            return fn(*args)

        op.__name__ = name
        return op

    def take(self) -> List[str]:
        """The calls since the last ``take()``."""
        out = list(self.calls)
        del self.calls[:]
        return out


def observe(dev, op: dict, log: Optional[ParentLog] = None) -> Dict[str, Any]:
    """Run ``op`` on the model device ``dev`` (:func:`iotlb.trace.apply`) and return
    its outcome.  Only :class:`~iotlb.IOTLBError` is an answer; anything else (a bug
    or bad input) propagates."""
    from .trace import MESSAGE_OPS, apply

    out: Dict[str, Any] = {"ret": None, "errno": None, "value": None}
    message = op["op"] in MESSAGE_OPS
    if message:
        out["handler"] = None
    try:
        result = apply(dev, op)
    except IOTLBError as exc:
        out["errno"] = errno_name(exc.errno)
        cause = exc.__cause__
        if message and isinstance(cause, IOTLBError):
            out["handler"] = errno_name(cause.errno)
    else:
        if message:
            out["ret"] = result
            out["handler"] = 0
        elif op["op"] in ("mmap", "munmap", "memlock", "meta"):
            out["ret"] = 0
        else:
            out["ret"] = 0
            if op["op"].startswith("get_"):
                out["value"] = list(result) if isinstance(result, tuple) else result
    out["vmpin"] = dev.usermem.pinned_vm
    if log is not None:
        out["parent"] = log.take()
    return out


def mismatches(expect: Dict[str, Any], outcome: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """``(key, expected, found)`` for every key of ``expect`` the outcome disagrees
    with, in :data:`KEYS` order (a key the outcome lacks is a mismatch)."""
    out = []
    for key in KEYS:
        if key in expect:
            found = outcome.get(key, "<not observed>")
            if expect[key] != found:
                out.append((key, expect[key], found))
    return out


def format_mismatch(key: str, expected, found) -> str:
    """One line: ``errno: expected EFAULT, found 0``."""
    def show(v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            return "[" + ", ".join(v) + "]"
        if isinstance(v, list):
            return "[" + ", ".join(hex(x) for x in v) + "]"
        return "none" if v is None else str(v)
    return f"{key}: expected {show(expected)}, found {show(found)}"
