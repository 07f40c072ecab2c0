"""``phenovec.profile``: single-cell embeddings and per-well profiles of whole plates with an exported phenovec
ONNX model: Rust decode + crop and onnxruntime inference inside Dask workers (or from a crop store), resumable
per site, with per-well mean / median profiles written as wells finish. Uses ``phenovec.runtime``; no torch.
"""
from phenovec.profile.contract import InputContract, contract_from_metadata, match_channels
from phenovec.profile.pipeline import ProfileResult, profile_sites, task_groups

__all__ = ["InputContract", "ProfileResult", "contract_from_metadata", "match_channels", "profile_sites",
           "task_groups"]
