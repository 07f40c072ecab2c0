"""phenovec: high-performance image-based profiling."""
from phenovec._core import __version__

__all__ = ["__version__"]
