"""Files on disk and other sources: atomic `save`, `load`, `open` (lazy `Reader`), `verify`; paths are
memory-mapped, file objects and `read_into` sources read by range."""

from ._reader import Reader, load, open, verify
from ._writer import save

__all__ = ["Reader", "load", "open", "save", "verify"]
