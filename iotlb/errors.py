"""The one exception type a kernel operation raises: :class:`IOTLBError`.

It subclasses :class:`OSError`, so ``.errno`` is the errno the kernel returns for the
same failure (``EFAULT``, ``EEXIST``, ``EINVAL``, ``ENOMEM``, ``EPERM``, ``EOPNOTSUPP``,
``ENOBUFS``, ``EBUSY``).  Programming errors (wrong types, values that are not u64) are
plain ``TypeError`` / ``ValueError`` / ``OverflowError`` instead.

>>> import errno
>>> e = IOTLBError(errno.EFAULT, "no mapping", iova=0x1000)
>>> e.errno == errno.EFAULT, e.iova
(True, 4096)
>>> isinstance(e, OSError)
True
>>> str(IOTLBError(errno.EOPNOTSUPP, "no suspend op"))
'[EOPNOTSUPP] no suspend op'

"""
from __future__ import annotations

import errno as _errno

__all__ = ["IOTLBError", "PluginError"]


class IOTLBError(OSError):
    """A failure with a kernel errno.

    ``iova`` is set by ``translate`` to the first address that has no mapping (EFAULT)
    or whose mapping lacks the access (EPERM); ``index`` is set by the batch forms to
    the position of the failing item.  Both are ``None`` otherwise.
    """

    def __init__(self, errno: int, message: str, *, iova: int | None = None,
                 index: int | None = None) -> None:
        super().__init__(errno, message)
        self.iova = iova
        self.index = index

    def __reduce__(self):
        return (_rebuild, (self.errno, self.strerror, self.iova, self.index))

    def __str__(self) -> str:
        name = _KERNEL_NAMES.get(self.errno) or _errno.errorcode.get(self.errno,
                                                                    str(self.errno))
        return f"[{name}] {self.strerror}"


class PluginError(IOTLBError):
    """A parent op (a backend, usually a plugin) raised something other than
    :class:`IOTLBError`: a bug in the plugin, not a kernel answer.  The device model
    handles it exactly as the kernel handles that op's error return (roll back, or
    ignore the result where the kernel ignores it) with errno EIO; the plugin's own
    exception is ``__cause__``, and ``op`` names the op.
    """

    def __init__(self, op: str, cause: BaseException) -> None:
        super().__init__(_errno.EIO, f"{op} raised {type(cause).__name__}: {cause}")
        self.op = op

    def __reduce__(self):
        return (IOTLBError, (self.errno, self.strerror))


# Where libc gives one number two names, say the one the kernel source uses.
_KERNEL_NAMES = {getattr(_errno, "EOPNOTSUPP", -1): "EOPNOTSUPP",
                 getattr(_errno, "EAGAIN", -1): "EAGAIN"}


def _rebuild(errno, message, iova, index):
    return IOTLBError(errno, message, iova=iova, index=index)
