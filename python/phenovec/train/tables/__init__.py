"""The profile-level (table) trainer: representation learning and assay prediction on profile tables.

Recipes (``train.task``): ``clip`` (Cell Painting + transcriptomics, CLIP-style symmetric InfoNCE), ``bae`` (bimodal
masked autoencoder), ``simclr_profiles`` (SimCLR on one profile / embedding table) and ``fnn`` (multi-task assay
prediction, SELU MLP, masked BCE). Modules: ``config`` (schema), ``pairing`` (joining the modalities, splits,
standardisation), ``synthetic`` (paired data with a shared latent), ``contrastive`` (losses, augmentation),
``encoders`` (models), ``loop`` (``train_tables``, resumable), ``evaluation`` (kNN accuracy, mAP, task AUC),
``export`` (ONNX with parity check) and ``inference`` (running an exported model on a new profile table).
"""
from phenovec.lazy_exports import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["TABLE_TASKS", "TABLE_COMMENTS", "default_table_config", "load_table_config"], "config"),
    **dict.fromkeys(["PairingError", "PairingReport", "pair_tables", "single_table", "split_rows"], "pairing"),
    **dict.fromkeys(["SyntheticPairs", "synthetic_assay_labels", "synthetic_config", "synthetic_paired",
                     "write_synthetic_tables"], "synthetic"),
    **dict.fromkeys(["TableTrainResult", "prepare_table_data", "train_tables"], "loop"),
    **dict.fromkeys(["TableExportReport", "export_table_model"], "export"),
    **dict.fromkeys(["embed_table"], "inference"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
