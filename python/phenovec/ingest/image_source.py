"""Where an image lives: a local path, a ``file://`` URL or an object-store URL read through ``fsspec``.

phenovec's decoders (the Rust core's ``decode_image`` / ``crop_site``) read local files. A LoadData CSV of the
Cell Painting Gallery names its images by URL (``s3://cellpainting-gallery/...``), so every image is resolved
to a local path here:

- a plain path or a ``file://`` URL is the local file itself (nothing copied);
- any other URL (``s3://``, ``gs://``, ``https://``, ``memory://`` ...) is read through ``fsspec``'s own backend
  for that protocol (``s3fs``, ``gcsfs`` ... when installed) and copied once into a cache folder as
  ``<cache>/<sha256 of the URL>/<file name>`` (written to a temporary name, then renamed: a killed copy leaves
  no partial image); a later run finds it there and reads nothing. ``omezarr://`` names one channel of an
  OME-Zarr field (``phenovec.ingest.ome_zarr.field_url``), written into the cache as a TIFF the same way. The
  cache is ``cache=`` when given, else ``$PHENOVEC_IMAGE_CACHE``, else ``~/.cache/phenovec/images``.

Errors say which URL failed and why (no backend for the protocol, not found, unreadable); callers add the file,
row and column that named it.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

OME_ZARR = "omezarr"  # phenovec.ingest.ome_zarr.field_url: one channel of an OME-Zarr field, written as a TIFF
# a scheme of 2+ letters (not a Windows drive) then ``:/``: ``s3://b/k``, ``file:///p`` and CellProfiler's ``file:/p``
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/")


def protocol(url: str) -> str | None:
    """The URL's protocol (``s3``, ``file``, ``memory`` ...) or None for a plain path."""
    m = _SCHEME.match(str(url))
    return m.group(1).lower() if m else None


def is_remote(url: str) -> bool:
    """True for a URL that is not a local file (anything but a plain path or ``file://``)."""
    return protocol(url) not in (None, "file", "local")


def join(folder: str, name: str) -> str:
    """``folder`` + ``name``: ``/``-joined for URLs, ``os.path.join`` for local folders."""
    folder, name = str(folder), str(name)
    if protocol(name) or os.path.isabs(name) or not folder:
        return name
    if protocol(folder):
        return folder.rstrip("/") + "/" + name.lstrip("/")
    return os.path.join(folder, name)


def local_file(url: str) -> str:
    """The local path of a plain path or a ``file:`` URL (``file:///p``, ``file://localhost/p`` or CellProfiler's
    ``file:/p``; percent-escapes decoded)."""
    if protocol(url) in ("file", "local"):
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        parts = urlsplit(str(url))
        if parts.netloc not in ("", "localhost"):
            raise OSError(f"{url}: a file URL on another host ({parts.netloc}) is not a local file")
        return url2pathname(parts.path)
    return str(url)


def default_cache() -> Path:
    env = os.environ.get("PHENOVEC_IMAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "phenovec" / "images"


def cached_path(url: str, cache: str | os.PathLike) -> Path:
    """Where :func:`fetch` keeps the copy of ``url`` in ``cache``."""
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:32]
    name = str(url).rstrip("/").rsplit("/", 1)[-1] or "image"
    return Path(cache) / digest / name


def fetch(url: str, cache: str | os.PathLike | None = None) -> str:
    """A local path holding the bytes of ``url`` (module docstring); raises ``FileNotFoundError`` (missing) or
    ``OSError`` (no backend, unreadable) naming the URL."""
    if not is_remote(url):
        path = local_file(url)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{url}: no such file")
        return path
    target = cached_path(url, default_cache() if cache is None else cache)
    if target.is_file():
        return str(target)
    if protocol(url) == OME_ZARR:  # a channel of an OME-Zarr field (phenovec.ingest.ome_zarr.field_url)
        from phenovec.ingest.ome_zarr import write_field_channel

        def write(tmp: Path) -> None:
            try:
                write_field_channel(url, tmp)
            except (ValueError, KeyError) as e:
                raise OSError(f"{url}: {e.args[0] if e.args else e}") from None
    else:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise OSError(f"{url}: cannot open protocol {protocol(url)!r} ({e}); install fsspec's backend for it "
                          "(e.g. s3fs for s3://, gcsfs for gs://)") from None

        def write(tmp: Path) -> None:
            with fs.open(path, "rb") as src, open(tmp, "wb") as dst:
                while True:
                    block = src.read(1 << 22)
                    if not block:
                        break
                    dst.write(block)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        write(tmp)
        os.replace(tmp, target)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: not found") from None
    except OSError as e:
        msg = str(e)
        raise OSError(msg if msg.startswith(f"{url}: ") else f"{url}: cannot read ({e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(target)


def fetch_all(urls: Sequence[str], cache: str | os.PathLike | None = None, threads: int = 8,
              where: Callable[[int], str] | None = None) -> list[str]:
    """:func:`fetch` of every URL (remote ones on ``threads`` threads), in order. An error is re-raised with
    ``where(i)`` (the file, row and column that named URL ``i``) in front."""
    def one(i):
        try:
            return fetch(urls[i], cache)
        except OSError as e:
            msg = f"{where(i)}: {e}" if where is not None else str(e)
            raise type(e)(msg) from None

    first: dict[str, int] = {}  # each remote URL fetched once (one file for several channels: Frame_<Ch>)
    for i, u in enumerate(urls):
        if is_remote(u):
            first.setdefault(str(u), i)
    out = [None if is_remote(u) else one(i) for i, u in enumerate(urls)]
    if first:
        with ThreadPoolExecutor(max(1, min(threads, len(first)))) as pool:
            got = dict(zip(first, pool.map(one, first.values())))
        out = [got[str(u)] if o is None else o for u, o in zip(urls, out)]
    return out


def local_paths(urls: Sequence[str], cache: str | os.PathLike | None = None,
                where: Callable[[int], str] | None = None) -> list[str]:
    """The local paths of one site's images: :func:`fetch_all` when any of ``urls`` is remote, else the local
    paths themselves (``file:`` URLs resolved, nothing checked or copied)."""
    urls = list(urls)
    if any(is_remote(u) for u in urls):
        return fetch_all(urls, cache, where=where)
    return [local_file(u) for u in urls]


def read_bytes(url: str) -> bytes:
    """The bytes of a small file (a LoadData CSV) at a path or URL; errors name the URL."""
    if not is_remote(url):
        path = local_file(url)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{url}: no such file")
        return Path(path).read_bytes()
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: not found") from None
    except (ImportError, ValueError) as e:
        raise OSError(f"{url}: cannot open protocol {protocol(url)!r} ({e})") from None
