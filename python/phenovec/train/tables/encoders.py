"""The networks of the table trainer: MLP encoders on profiles, one model class per task.

Every model takes standardised profiles (float32 N x D), holds a plain-data ``config`` (rebuilt by
:func:`model_from_config` from a checkpoint), computes its own loss from a batch dict (``cp``, ``tx``, ``group``,
``labels``, ``partner``; ``train`` = with augmentation) and has ``embed(cp)``, the output that is exported:

==================  ======================================================================  =====================
task                model                                                                    ``embed`` (exported)
==================  ======================================================================  =====================
``clip``            CP MLP (``cp_hidden``) and TX MLP (``tx_hidden``) to ``embed_dim``, a    CP encoder output
                    linear projection each to ``proj_dim``; symmetric InfoNCE, cosine
                    similarity, learnable or fixed temperature; 10 % feature masking
``bae``             CP encoder (``bae_encoder``) to the latent (``embed_dim``), a CP decoder   the shared latent
                    and a TX decoder from it; loss 1/2 MSE_CP + 1/2 MSE_TX; masked input
``simclr_profiles`` MLP encoder (``cp_hidden``) to ``embed_dim``, a two-layer projection head  encoder output
                    to ``proj_dim``; NT-Xent on two views (masking + noise, or a replicate)
``fnn``             SELU MLP (``fnn_hidden``, LeCun-normal init, alpha dropout) to one logit   sigmoid probabilities
                    per task; masked BCE (:func:`phenovec.train.masked_bce.masked_bce`)
==================  ======================================================================  =====================
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from phenovec.train.tables.contrastive import augment_profiles, nt_xent, symmetric_info_nce

__all__ = ["AssayFNN", "BimodalAE", "ClipModel", "SimCLRProfiles", "build_table_model", "mlp", "model_from_config"]

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of 1 / temperature


def mlp(n_in: int, hidden: Sequence[int], n_out: int, dropout: float = 0.0, selu: bool = False) -> nn.Sequential:
    """``Linear -> ReLU (or SELU) -> Dropout (alpha dropout with SELU)`` per hidden width, then ``Linear(n_out)``."""
    layers: list[nn.Module] = []
    width = int(n_in)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.SELU() if selu else nn.ReLU()]
        if dropout > 0:
            layers.append(nn.AlphaDropout(dropout) if selu else nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, int(n_out)))
    net = nn.Sequential(*layers)
    if selu:  # LeCun normal, zero bias: what keeps a SELU network self-normalising
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)
    return net


class _TableModel(nn.Module):
    kind = ""

    def __init__(self, **config):
        super().__init__()
        self.config = {"kind": self.kind, **config}

    @property
    def feature_dim(self) -> int:
        return int(self.config["embed_dim"])


class ClipModel(_TableModel):
    kind = "clip"

    def __init__(self, cp_dim: int, tx_dim: int, cp_hidden=(1024, 1024, 1024), tx_hidden=(4096, 4096, 4096),
                 embed_dim: int = 512, proj_dim: int = 256, dropout: float = 0.0, temperature: float = 0.1,
                 learn_temperature: bool = True, mask_fraction: float = 0.1, noise_std: float = 0.0):
        super().__init__(cp_dim=cp_dim, tx_dim=tx_dim, cp_hidden=list(cp_hidden), tx_hidden=list(tx_hidden),
                         embed_dim=embed_dim, proj_dim=proj_dim, dropout=dropout, temperature=temperature,
                         learn_temperature=learn_temperature, mask_fraction=mask_fraction, noise_std=noise_std)
        self.cp_encoder = mlp(cp_dim, cp_hidden, embed_dim, dropout)
        self.tx_encoder = mlp(tx_dim, tx_hidden, embed_dim, dropout)
        self.cp_projection = nn.Linear(embed_dim, proj_dim)
        self.tx_projection = nn.Linear(embed_dim, proj_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def logit_scale(self):
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def embed(self, cp):
        return self.cp_encoder(cp)

    def loss(self, batch: dict, train: bool):
        c = self.config
        cp, tx = batch["cp"], batch["tx"]
        if train:
            cp = augment_profiles(cp, c["mask_fraction"], c["noise_std"])
            tx = augment_profiles(tx, c["mask_fraction"], c["noise_std"])
        a = self.cp_projection(self.cp_encoder(cp))
        b = self.tx_projection(self.tx_encoder(tx))
        return symmetric_info_nce(a, b, self.logit_scale(), batch.get("group"))


class BimodalAE(_TableModel):
    kind = "bae"

    def __init__(self, cp_dim: int, tx_dim: int, encoder=(1024, 512, 512), cp_decoder=(512, 512, 1024),
                 tx_decoder=(1024, 2048, 4096), embed_dim: int = 512, dropout: float = 0.0,
                 mask_fraction: float = 0.1, noise_std: float = 0.0):
        super().__init__(cp_dim=cp_dim, tx_dim=tx_dim, encoder=list(encoder), cp_decoder=list(cp_decoder),
                         tx_decoder=list(tx_decoder), embed_dim=embed_dim, dropout=dropout,
                         mask_fraction=mask_fraction, noise_std=noise_std)
        self.encoder = mlp(cp_dim, encoder, embed_dim, dropout)
        self.cp_decoder = mlp(embed_dim, cp_decoder, cp_dim, dropout)
        self.tx_decoder = mlp(embed_dim, tx_decoder, tx_dim, dropout)

    def embed(self, cp):
        return self.encoder(cp)

    def loss(self, batch: dict, train: bool):
        cp, tx = batch["cp"], batch["tx"]
        x = augment_profiles(cp, self.config["mask_fraction"], self.config["noise_std"]) if train else cp
        h = self.encoder(x)
        mse = nn.functional.mse_loss
        return 0.5 * mse(self.cp_decoder(h), cp) + 0.5 * mse(self.tx_decoder(h), tx)


class SimCLRProfiles(_TableModel):
    kind = "simclr_profiles"

    def __init__(self, cp_dim: int, cp_hidden=(1024, 1024, 1024), embed_dim: int = 512, proj_dim: int = 256,
                 dropout: float = 0.0, temperature: float = 0.5, mask_fraction: float = 0.1, noise_std: float = 0.1,
                 positives: str = "views"):
        super().__init__(cp_dim=cp_dim, cp_hidden=list(cp_hidden), embed_dim=embed_dim, proj_dim=proj_dim,
                         dropout=dropout, temperature=temperature, mask_fraction=mask_fraction, noise_std=noise_std,
                         positives=positives)
        self.encoder = mlp(cp_dim, cp_hidden, embed_dim, dropout)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, proj_dim))

    def embed(self, cp):
        return self.encoder(cp)

    def loss(self, batch: dict, train: bool):
        c = self.config
        cp = batch["cp"]
        other = batch.get("partner", cp) if c["positives"] == "replicates" else cp
        v1 = augment_profiles(cp, c["mask_fraction"], c["noise_std"])
        v2 = augment_profiles(other, c["mask_fraction"], c["noise_std"])
        groups = batch.get("group") if c["positives"] == "replicates" else None
        return nt_xent(self.head(self.encoder(v1)), self.head(self.encoder(v2)), c["temperature"], groups)


class AssayFNN(_TableModel):
    kind = "fnn"

    def __init__(self, cp_dim: int, tasks: Sequence[str], hidden=(1024, 1024, 1024), dropout: float = 0.0):
        super().__init__(cp_dim=cp_dim, tasks=[str(t) for t in tasks], hidden=list(hidden), dropout=dropout)
        self.net = mlp(cp_dim, hidden, len(tasks), dropout, selu=True)

    @property
    def feature_dim(self) -> int:
        return len(self.config["tasks"])

    def forward(self, cp):
        return self.net(cp)

    def embed(self, cp):
        """Per-task probabilities (sigmoid of the logits)."""
        return torch.sigmoid(self.net(cp))

    def loss(self, batch: dict, train: bool):
        from phenovec.train.masked_bce import masked_bce

        return masked_bce(self.net(batch["cp"]), batch["labels"])


TABLE_MODELS = {m.kind: m for m in (ClipModel, BimodalAE, SimCLRProfiles, AssayFNN)}


def build_table_model(task: str, cfg: dict, cp_dim: int, tx_dim: int | None = None, tasks: Sequence[str] = ()):
    """The model of ``task`` from the validated table configuration's ``model`` section."""
    m = cfg["model"]
    common = {"dropout": m["dropout"]}
    if task == "clip":
        return ClipModel(cp_dim, tx_dim, m["cp_hidden"], m["tx_hidden"], m["embed_dim"], m["proj_dim"],
                         temperature=m["temperature"], learn_temperature=m["learn_temperature"],
                         mask_fraction=m["mask_fraction"], noise_std=m["noise_std"], **common)
    if task == "bae":
        return BimodalAE(cp_dim, tx_dim, m["bae_encoder"], m["bae_cp_decoder"], m["bae_tx_decoder"], m["embed_dim"],
                         mask_fraction=m["mask_fraction"], noise_std=m["noise_std"], **common)
    if task == "simclr_profiles":
        return SimCLRProfiles(cp_dim, m["cp_hidden"], m["embed_dim"], m["proj_dim"], temperature=m["temperature"],
                              mask_fraction=m["mask_fraction"], noise_std=m["noise_std"], positives=m["positives"],
                              **common)
    if task == "fnn":
        return AssayFNN(cp_dim, tasks, m["fnn_hidden"], **common)
    raise ValueError(f"unknown table task {task!r} (known: {', '.join(TABLE_MODELS)})")


def model_from_config(config: dict):
    """A model of the class ``config['kind']`` names, built from the rest of ``config`` (a checkpoint's)."""
    kw = dict(config)
    kind = kw.pop("kind", None)
    if kind not in TABLE_MODELS:
        raise ValueError(f"model config kind {kind!r} is not a table model ({', '.join(TABLE_MODELS)})")
    return TABLE_MODELS[kind](**kw)
