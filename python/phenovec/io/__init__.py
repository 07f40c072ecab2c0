"""Schema and I/O: profile tables and their readers/writers (bound on first use: importing a small submodule such as
``phenovec.io.atomic`` does not import pandas)."""
from phenovec.lazy_exports import lazy_exports

__all__ = ["Profiles", "read_table", "split_profiles", "write_table"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "profiles"))
