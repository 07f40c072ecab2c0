"""``phenovec.profile``: single-cell embeddings and per-well profiles of whole plates with an exported phenovec
ONNX model: Rust decode + crop and onnxruntime inference inside Dask workers (or from a crop store), resumable
per site, with per-well mean / median profiles written as wells finish; and the whole-field mode (MOAProfiler:
one embedding per field, ``profile_fields``). Uses ``phenovec.runtime``; no torch.
"""
from phenovec.lazy_exports import lazy_exports

# public name -> submodule, imported on first use (the CLI's parser imports profile.command only)
_EXPORTS = {
    **dict.fromkeys(["InputContract", "contract_from_metadata", "match_channels"], "contract"),
    **dict.fromkeys(["field_channel_stats", "profile_fields"], "fields"),
    **dict.fromkeys(["ProfileResult", "profile_sites", "task_groups"], "pipeline"),
    **dict.fromkeys(["ShardsResult", "profile_shards", "shard_specs"], "shards"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["InputContract", "ProfileResult", "ShardsResult", "contract_from_metadata", "field_channel_stats",
           "match_channels", "profile_fields", "profile_shards", "profile_sites", "shard_specs", "task_groups"]
