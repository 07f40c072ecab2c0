"""Schema and I/O: profile tables and their readers/writers."""
from phenovec.io.profiles import Profiles, read_table, split_profiles, write_table

__all__ = ["Profiles", "read_table", "split_profiles", "write_table"]
