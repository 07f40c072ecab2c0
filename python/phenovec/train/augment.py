"""Training-time augmentation of single-cell crops: DeepProfiler's recipe on batched tensors.

Follows ``deepprofiler/imaging/augmentations.py`` (``augment`` = ``random_crop`` -> ``random_flips``
-> ``random_illumination``), described in the thesis (Bornholdt 2021, section 3.2.2): "we crop the
image with a 50% probability with a crop size of 80-100%. Next, random horizontal flips and 90-degree
rotations are applied, and brightness and contrast variations are performed." Per sample, in order:

1. **crop** (p = ``crop_p`` = 0.5): a square of integer side ``s`` drawn uniformly from
   ``[int(crop_min * S), S - 1]`` with ``S = min(H, W)`` (DeepProfiler:
   ``tf.random.uniform(minval=int(w*0.8), maxval=w)``, ``maxval`` exclusive) at a uniformly random
   position, resized back to H x W bilinearly with half-pixel centres and no antialiasing (the
   ``tf.image.resize`` default; equal to ``F.interpolate(crop, (H, W), mode="bilinear",
   align_corners=False)`` of the cropped patch). Done for the whole batch with one ``grid_sample``.
2. **flip** (p = 0.5): left-right (reverse the W axis), as ``tf.image.random_flip_left_right``.
3. **rot90**: ``k`` uniform in {0, 1, 2, 3}, counter-clockwise ``k * 90`` degrees
   (``torch.rot90(dims=(-2, -1))`` = ``tf.image.rot90``). Needs square crops (H == W).
4. **brightness**: ADDITIVE, per sample and per channel, ``x + b`` with ``b ~ U(-0.1, 0.1)``
   (``tf.image.adjust_brightness`` adds ``delta``; crops are min-max scaled to [0, 1] per channel, so
   this is +-10 % of the range).
5. **contrast**: per sample and per channel, ``(x - m) * c + m`` with ``c ~ U(0.8, 1.2)`` and ``m``
   the channel's spatial mean of the (brightened) crop (``tf.image.adjust_contrast``).

No clipping (DeepProfiler does not clip float images). DeepProfiler's grey->RGB->grey round trip
multiplies the illumination result by 0.2989 + 0.5870 + 0.1140 = 0.9999; that artefact is omitted.

All random numbers are drawn on the CPU from the module's own ``torch.Generator`` in a fixed order
whatever ops are enabled (so turning one op off does not change the draws of the others, and a seed
reproduces a batch exactly on any device); the image work runs on the input's device. The generator
state is part of ``state_dict()`` (``get_extra_state``), so a resumed run continues the same stream.
In ``eval()`` mode, or with every op disabled, the module returns its input unchanged.

``batch_slice = (total, start)`` (data-parallel training, ``phenovec.train.distributed``): the input is rows
``start .. start + N`` of a global batch of ``total``; the random numbers are drawn for the whole global batch and
those of the slice applied, so a sample is augmented exactly as in a one-process run. ``None`` (default): the input
is the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Augment"]


class Augment(nn.Module):
    """DeepProfiler's crop / flip / rot90 / brightness / contrast augmentation for N x C x H x W batches.

    Args:
        seed: seed of the module's ``torch.Generator`` (``None``: a nondeterministic seed).
        crop, flip, rot90, brightness, contrast: turn each op on or off.
        crop_p: probability of the random crop (0.5).
        crop_min: smallest crop side as a fraction of the side (0.8).
        brightness_delta: half-width of the additive brightness offset (0.1).
        contrast_range: (low, high) of the contrast factor ((0.8, 1.2)).
    """

    def __init__(self, seed: int | None = None, *, crop: bool = True, flip: bool = True, rot90: bool = True,
                 brightness: bool = True, contrast: bool = True, crop_p: float = 0.5, crop_min: float = 0.8,
                 brightness_delta: float = 0.1, contrast_range: tuple[float, float] = (0.8, 1.2)) -> None:
        super().__init__()
        if not 0.0 <= crop_p <= 1.0:
            raise ValueError(f"crop_p must be in [0, 1], got {crop_p!r}")
        if not 0.0 < crop_min <= 1.0:
            raise ValueError(f"crop_min must be in (0, 1], got {crop_min!r}")
        if brightness_delta < 0:
            raise ValueError(f"brightness_delta must be >= 0, got {brightness_delta!r}")
        lo, hi = (float(v) for v in contrast_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"contrast_range must be (low, high) with 0 <= low <= high, got {contrast_range!r}")
        self.crop, self.flip, self.rot90 = bool(crop), bool(flip), bool(rot90)
        self.brightness, self.contrast = bool(brightness), bool(contrast)
        self.crop_p, self.crop_min = float(crop_p), float(crop_min)
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (lo, hi)
        self.batch_slice: tuple[int, int] | None = None
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def manual_seed(self, seed: int) -> "Augment":
        """Reseed the generator (e.g. per epoch); returns self."""
        self.generator.manual_seed(int(seed))
        return self

    # generator state travels with state_dict() for exact resume
    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def extra_repr(self) -> str:
        return (f"crop={self.crop} (p={self.crop_p}, min={self.crop_min}), flip={self.flip}, rot90={self.rot90}, "
                f"brightness={self.brightness} (+-{self.brightness_delta}), contrast={self.contrast} "
                f"{self.contrast_range}")

    def _draw(self, n: int, c: int, h: int, w: int) -> dict[str, torch.Tensor]:
        """All random numbers for a batch, in a fixed order, on the CPU."""
        g = self.generator
        side = min(h, w)
        lo_side = max(1, int(self.crop_min * side))
        hi_side = max(lo_side, side - 1)  # [lo, S-1]; a 1-pixel-wide range when S is tiny
        do_crop = torch.rand(n, generator=g) < self.crop_p
        crop_side = torch.randint(lo_side, hi_side + 1, (n,), generator=g)
        u_y = torch.rand(n, generator=g)
        u_x = torch.rand(n, generator=g)
        # offsets uniform over the valid positions: floor(u * (H - s + 1))
        off_y = torch.minimum((u_y * (h - crop_side + 1)).floor().long(), h - crop_side)
        off_x = torch.minimum((u_x * (w - crop_side + 1)).floor().long(), w - crop_side)
        do_flip = torch.rand(n, generator=g) < 0.5
        k = torch.randint(0, 4, (n,), generator=g)
        bright = (torch.rand(n, c, generator=g) * 2.0 - 1.0) * self.brightness_delta
        lo, hi = self.contrast_range
        factor = lo + torch.rand(n, c, generator=g) * (hi - lo)
        return {"do_crop": do_crop, "side": crop_side, "off_y": off_y, "off_x": off_x, "do_flip": do_flip,
                "k": k, "bright": bright, "factor": factor}

    @staticmethod
    def _crop_resize(x: torch.Tensor, side: torch.Tensor, off_y: torch.Tensor, off_x: torch.Tensor) -> torch.Tensor:
        """Crop ``side x side`` at ``(off_y, off_x)`` per sample and resize back to H x W (bilinear,
        half-pixel centres, source coordinates clamped to the crop as ``F.interpolate`` does)."""
        n, _, h, w = x.shape
        dev = x.device
        s = side.to(dev, torch.float64)[:, None]
        oy = off_y.to(dev, torch.float64)[:, None]
        ox = off_x.to(dev, torch.float64)[:, None]
        jy = torch.arange(h, device=dev, dtype=torch.float64)[None, :]
        jx = torch.arange(w, device=dev, dtype=torch.float64)[None, :]
        sy = torch.minimum(torch.clamp((jy + 0.5) * s / h - 0.5, min=0.0), s - 1) + oy  # N x H pixel rows
        sx = torch.minimum(torch.clamp((jx + 0.5) * s / w - 0.5, min=0.0), s - 1) + ox  # N x W pixel cols
        gy = (2.0 * sy + 1.0) / h - 1.0  # grid_sample, align_corners=False
        gx = (2.0 * sx + 1.0) / w - 1.0
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augmented copy of ``x`` (N x C x H x W, floating point); ``x`` itself in eval mode."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"Augment expects an N x C x H x W tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"Augment expects a floating-point tensor, got {x.dtype}")
        if not self.training or x.shape[0] == 0:
            return x
        n, c, h, w = x.shape
        if self.rot90 and h != w:
            raise ValueError(f"Augment: 90-degree rotations need square crops, got H x W = {h} x {w} "
                             f"(turn rot90 off for non-square inputs)")
        total, start = self.batch_slice if self.batch_slice is not None else (n, 0)
        if not (0 <= start and start + n <= total):
            raise ValueError(f"Augment.batch_slice = {self.batch_slice}: a batch of {n} does not fit")
        r = self._draw(total, c, h, w)
        if total != n:
            r = {k: v[start:start + n] for k, v in r.items()}
        dev = x.device
        out = x
        if self.crop:
            idx = r["do_crop"].nonzero().flatten()
            if idx.numel():
                out = out.clone()
                ix = idx.to(dev)
                out[ix] = self._crop_resize(out[ix], r["side"][idx], r["off_y"][idx], r["off_x"][idx])
        if self.flip:
            m = r["do_flip"].to(dev)[:, None, None, None]
            out = torch.where(m, out.flip(-1), out)
        if self.rot90:
            rotated = out.clone() if out is x else out
            for k in (1, 2, 3):
                idx = (r["k"] == k).nonzero().flatten()
                if idx.numel():
                    ix = idx.to(dev)
                    rotated[ix] = torch.rot90(out[ix], k, dims=(-2, -1))
            out = rotated
        if self.brightness:
            out = out + r["bright"].to(dev, x.dtype)[:, :, None, None]
        if self.contrast:
            mean = out.mean(dim=(-2, -1), keepdim=True)
            out = (out - mean) * r["factor"].to(dev, x.dtype)[:, :, None, None] + mean
        return out
