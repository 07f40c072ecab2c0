"""A figure as phenovec's stages hand it on: a title, a caption and the PNG bytes (matplotlib's Agg backend, no
display). Stages that draw (evaluate's assay plot, the report) build on this so none imports another's face."""
from __future__ import annotations

import io
from dataclasses import dataclass

DPI = 100


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    png: bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Render and close a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()
