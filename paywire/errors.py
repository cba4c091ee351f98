"""One exception for everything the wire layer refuses.

`code` is stable (clients and tests match on it); `message` is one line for
people. The center maps codes to HTTP statuses in one table (center.errors).
"""

from __future__ import annotations


class WireError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"WireError({self.code!r}, {self.message!r})"
