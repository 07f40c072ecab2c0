"""``phenovec.profile``: single-cell embeddings and per-well profiles of whole plates with an exported phenovec
ONNX model: Rust decode + crop and onnxruntime inference inside Dask workers (or from a crop store), resumable
per site, with per-well mean / median profiles written as wells finish; and the whole-field mode (MOAProfiler:
one embedding per field, ``profile_fields``). Uses ``phenovec.runtime``; no torch.
"""
from phenovec.profile.contract import InputContract, contract_from_metadata, match_channels
from phenovec.profile.fields import field_channel_stats, profile_fields
from phenovec.profile.pipeline import ProfileResult, profile_sites, task_groups

__all__ = ["InputContract", "ProfileResult", "contract_from_metadata", "field_channel_stats", "match_channels",
           "profile_fields", "profile_sites", "task_groups"]
