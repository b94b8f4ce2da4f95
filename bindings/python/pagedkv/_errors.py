"""PagedKVError: the exception of every failing pagedkv call."""
from __future__ import annotations

from typing import Any, Tuple

from ._enums import Status

__all__ = ["PagedKVError"]


class PagedKVError(RuntimeError):
    """A pagedkv call failed.

    Attributes:
        status: the :class:`Status` the C library returned (``Status.INVALID_ARGUMENT``, ...).
        message: the library's message (``pkv_last_error_message()``), with the function name
            and context, e.g. ``"pkv_write_kv: slot_mapping dtype must be int32 or int64, got bf16"``.

    ``Status.OUT_OF_BLOCKS`` is recoverable: nothing was changed.
    """

    status: Status
    message: str

    def __init__(self, status: Any, message: str = "") -> None:
        try:
            st = Status(int(status))
        except ValueError:
            st = status  # an unknown value from a newer library: keep the int
        super().__init__(st, message)
        self.status = st
        self.message = message

    def __str__(self) -> str:
        name = self.status.c_name if isinstance(self.status, Status) else f"status {self.status}"
        return f"[{name}] {self.message}" if self.message else name

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (int(self.status), self.message))


PagedKVError.__module__ = "pagedkv"  # shown (and pickled) as pagedkv.PagedKVError
