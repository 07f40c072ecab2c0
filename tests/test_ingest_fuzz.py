"""Seeded mutation fuzz of the image decode path through the binding (``phenovec._core.decode_image``).

Base files (written here, in memory): small 16- and 8-bit greyscale TIFFs (uncompressed, LZW, deflate,
PackBits; with and without the horizontal predictor; several strips; one tiled; big-endian; BigTIFF) and
8/16-bit greyscale PNGs written by hand (zlib + struct). Case ``i`` of seed ``s`` is fully determined by
``numpy.random.default_rng([s, i])``: it picks a base file and applies 1-3 mutations (random byte writes, bit
flips, truncation, insertion, deletion, duplication of a range, or a corrupted header field: a TIFF IFD
entry's value / type / count / array element for width, height, bits per sample, compression, photometric,
strip or tile offsets and byte counts, rows per strip, samples per pixel, predictor, sample format; a PNG IHDR
field with or without a repaired CRC; IDAT bytes with a repaired CRC).

The only acceptable outcomes of decoding a case:

* a 2-D C-contiguous ``uint16`` array whose shape is (height, width) as the mutated file's header declares
  (first IFD / IHDR, parsed independently here); or
* ``ValueError`` / ``FileNotFoundError`` whose message contains the file name;

never a crash, a hang (more than ``CASE_LIMIT_S`` per file) or another exception. Cases run in a child
process watched by the parent, so a crash or a hang is reported with the case to reproduce it
(``python tests/test_ingest_fuzz.py --case I --seed S --save DIR``) instead of killing the test run.

Long run: ``python tests/test_ingest_fuzz.py --cases 50000`` (prints a JSON summary with cases/s; a crashed or
hung case is recorded and the run continues after it).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

CASE_LIMIT_S = 2.0
# TIFF tags whose IFD entries the header mutation targets.
TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression", 262: "Photometric",
        273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
        284: "PlanarConfiguration", 317: "Predictor", 322: "TileWidth", 323: "TileLength", 324: "TileOffsets",
        325: "TileByteCounts", 339: "SampleFormat"}
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
# how an integer entry is read (the decoder also takes UNDEFINED as bytes and IFD / IFD8 as unsigned offsets)
INT_FMT = {1: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


# ----------------------------------------------------------------------------------------------------------
# base files


def _png(img: np.ndarray) -> bytes:
    """A greyscale PNG (8 or 16 bit) written by hand: signature, IHDR, one IDAT (filter byte 0), IEND."""
    h, w = img.shape
    depth = 8 if img.dtype == np.uint8 else 16
    raw = img.astype(">u2").tobytes() if depth == 16 else img.tobytes()
    row = w * depth // 8
    data = b"".join(b"\0" + raw[r * row:(r + 1) * row] for r in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def base_files() -> list[tuple[str, bytes, np.ndarray]]:
    """(name, file bytes, pixels) of every valid base file; deterministic."""
    import tifffile

    rng = np.random.default_rng(12345)
    a16 = rng.integers(0, 65536, (23, 37), dtype=np.uint16)  # not square: width/height must not swap
    a16[:, :10] = 500  # runs, so PackBits/LZW have something to compress
    a8 = rng.integers(0, 256, (19, 21), dtype=np.uint8)
    out = []

    def tif(name, img, **kw):
        b = io.BytesIO()
        tifffile.imwrite(b, img, photometric="minisblack", metadata=None, **kw)
        out.append((name, b.getvalue(), img))

    for comp in (None, "lzw", "zlib", "packbits"):
        tif(f"u16_{comp}", a16, compression=comp, rowsperstrip=5)
        tif(f"u8_{comp}", a8, compression=comp, rowsperstrip=4)
    tif("u16_lzw_pred", a16, compression="lzw", predictor=True, rowsperstrip=8)
    tif("u16_zlib_pred", a16, compression="zlib", predictor=True, rowsperstrip=23)
    tif("u16_tiled_zlib", np.pad(a16, ((0, 9), (0, 11))), compression="zlib", tile=(16, 16))
    tif("u16_be_lzw", a16, compression="lzw", byteorder=">", rowsperstrip=7)
    tif("u16_bigtiff", a16, bigtiff=True, rowsperstrip=6)
    out.append(("png16", _png(a16), a16))
    out.append(("png8", _png(a8), a8))
    return out


# ----------------------------------------------------------------------------------------------------------
# header parsing (the oracle: the size the file declares)


def _tiff_ifd(b: bytes):
    """(byte order, entries [(entry offset, tag, type, count, value-field offset)]) of a classic TIFF's first
    IFD, or None when it cannot be parsed."""
    if len(b) < 8 or b[:4] not in (b"II*\0", b"MM\0*"):
        return None
    bo = "<" if b[:2] == b"II" else ">"
    off = struct.unpack(bo + "I", b[4:8])[0]
    if off + 2 > len(b):
        return None
    n = struct.unpack(bo + "H", b[off:off + 2])[0]
    ents = []
    for k in range(n):
        e = off + 2 + 12 * k
        if e + 12 > len(b):
            break
        tag, typ, cnt = struct.unpack(bo + "HHI", b[e:e + 8])
        ents.append((e, tag, typ, cnt, e + 8))
    return bo, ents


def _tiff_value(b: bytes, bo: str, typ: int, cnt: int, voff: int):
    """First value of an entry as an unsigned int (None if unreadable or not an integer type)."""
    size = TYPE_SIZE.get(typ)
    if typ not in INT_FMT or cnt < 1:
        return None
    if size * cnt > 4:
        voff = struct.unpack(bo + "I", b[voff:voff + 4])[0]
    fmt = INT_FMT[typ]
    if voff + size > len(b):
        return None
    return struct.unpack(bo + fmt, b[voff:voff + size])[0]


def declared_shape(b: bytes):
    """(height, width) the file's header declares, or None when it cannot be determined here."""
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24 and b[12:16] == b"IHDR":
        w, h = struct.unpack(">II", b[16:24])
        return h, w
    if b[:4] in (b"II+\0", b"MM\0+") and len(b) >= 16:  # BigTIFF: 8-byte offsets, 20-byte entries
        bo = "<" if b[:2] == b"II" else ">"
        off = struct.unpack(bo + "Q", b[8:16])[0]
        if off + 8 > len(b):
            return None
        n = struct.unpack(bo + "Q", b[off:off + 8])[0]
        dims = {}
        for k in range(min(n, 65535)):  # a corrupted count may exceed the entries present
            e = off + 8 + 20 * k
            if e + 20 > len(b):
                break
            tag, typ, cnt = struct.unpack(bo + "HHQ", b[e:e + 12])
            if tag in (256, 257) and tag not in dims:
                size = TYPE_SIZE.get(typ)
                if typ not in INT_FMT or cnt < 1 or size * cnt > 8:
                    return None
                fmt = INT_FMT[typ]
                dims[tag] = struct.unpack(bo + fmt, b[e + 12:e + 12 + size])[0]
        return (dims[257], dims[256]) if len(dims) == 2 else None
    p = _tiff_ifd(b)
    if p is None:
        return None
    bo, ents = p
    dims = {}
    for _, tag, typ, cnt, voff in ents:
        if tag in (256, 257) and tag not in dims:
            dims[tag] = _tiff_value(b, bo, typ, cnt, voff)
    if dims.get(256) is None or dims.get(257) is None:
        return None
    return dims[257], dims[256]


# ----------------------------------------------------------------------------------------------------------
# mutations


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _mutate_tiff_header(b: bytearray, rng) -> str:
    p = _tiff_ifd(bytes(b))
    if p is None or not p[1]:
        return _mutate_bytes(b, rng)
    bo, ents = p
    targets = [e for e in ents if e[1] in TAGS] or ents
    e, tag, typ, cnt, voff = _pick(rng, targets)
    what = _pick(rng, ["value", "value", "value", "type", "count", "element"])
    val = int(_pick(rng, INTERESTING)) if rng.random() < 0.8 else int(rng.integers(0, 2**32))
    name = TAGS.get(tag, str(tag))
    size = TYPE_SIZE.get(typ, 4)
    if what == "type":
        new = int(_pick(rng, [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 99]))
        struct.pack_into(bo + "H", b, e + 2, new)
        return f"{name}.type={new}"
    if what == "count":
        struct.pack_into(bo + "I", b, e + 4, val)
        return f"{name}.count={val}"
    if what == "element" and size * cnt > 4:
        ptr = struct.unpack(bo + "I", bytes(b[voff:voff + 4]))[0]
        j = int(rng.integers(cnt))
        at = ptr + j * size
        if size in (2, 4) and at + size <= len(b):
            struct.pack_into(bo + ("H" if size == 2 else "I"), b, at, val & (0xFFFF if size == 2 else 0xFFFFFFFF))
            return f"{name}[{j}]={val}"
    if size == 2 and cnt == 1:
        struct.pack_into(bo + "H", b, voff, val & 0xFFFF)
        return f"{name}={val & 0xFFFF}"
    struct.pack_into(bo + "I", b, voff, val)
    return f"{name}.field={val}"


def _png_fix_crc(b: bytearray, start: int) -> None:
    (n,) = struct.unpack(">I", bytes(b[start:start + 4]))
    end = start + 8 + n
    if end + 4 <= len(b):
        struct.pack_into(">I", b, end, zlib.crc32(bytes(b[start + 4:end])))


def _mutate_png_header(b: bytearray, rng) -> str:
    if len(b) < 33 or b[12:16] != b"IHDR":
        return _mutate_bytes(b, rng)
    field = _pick(rng, ["width", "height", "depth", "colour", "compression", "filter", "interlace", "idat"])
    fix = rng.random() < 0.75
    if field == "idat":
        start = 33
        if b[start + 4:start + 8] == b"IDAT":
            (n,) = struct.unpack(">I", bytes(b[start:start + 4]))
            n = min(n, len(b) - start - 8)  # an earlier mutation may have broken the length
            for _ in range(int(rng.integers(1, 4))):
                if n > 0:
                    b[start + 8 + int(rng.integers(n))] = int(rng.integers(256))
            _png_fix_crc(b, start)
        return "IDAT bytes (CRC repaired)"
    if field in ("width", "height"):
        val = int(_pick(rng, INTERESTING)) if rng.random() < 0.8 else int(rng.integers(0, 2**32))
        struct.pack_into(">I", b, 16 if field == "width" else 20, val)
    else:
        at = {"depth": 24, "colour": 25, "compression": 26, "filter": 27, "interlace": 28}[field]
        val = int(_pick(rng, [0, 1, 2, 3, 4, 6, 8, 16, 255]))
        b[at] = val
    if fix:
        _png_fix_crc(b, 8)
    return f"IHDR.{field}={val}{' (CRC repaired)' if fix else ''}"


def _mutate_bytes(b: bytearray, rng) -> str:
    kind = _pick(rng, ["write", "bitflip", "truncate", "insert", "delete", "duplicate"])
    n = len(b)
    if n == 0:
        b.extend(rng.integers(0, 256, 8, dtype=np.uint8).tobytes())
        return "fill empty"
    # bias positions towards the header, where most of the structure lives
    pos = lambda: int(rng.integers(min(n, 64))) if rng.random() < 0.5 else int(rng.integers(n))
    if kind == "write":
        k = int(rng.integers(1, 9))
        for _ in range(k):
            b[pos()] = int(_pick(rng, [0, 0xFF, 0x7F, 0x80])) if rng.random() < 0.3 else int(rng.integers(256))
        return f"write {k} bytes"
    if kind == "bitflip":
        k = int(rng.integers(1, 9))
        for _ in range(k):
            b[pos()] ^= 1 << int(rng.integers(8))
        return f"flip {k} bits"
    if kind == "truncate":
        cut = int(rng.integers(n))
        del b[cut:]
        return f"truncate at {cut}"
    if kind == "insert":
        at, k = int(rng.integers(n + 1)), int(rng.integers(1, 65))
        b[at:at] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        return f"insert {k} at {at}"
    if kind == "delete":
        at = int(rng.integers(n))
        k = int(rng.integers(1, 65))
        del b[at:at + k]
        return f"delete {k} at {at}"
    at = int(rng.integers(n))
    k = int(rng.integers(1, 129))
    b[at:at] = b[at:at + k]
    return f"duplicate {k} at {at}"


def make_case(bases, seed: int, i: int) -> tuple[str, bytes, str]:
    """(base name, mutated bytes, description) of case i of a seed."""
    rng = np.random.default_rng([seed, i])
    name, data, _ = _pick(rng, bases)
    b = bytearray(data)
    steps = []
    for _ in range(int(_pick(rng, [1, 1, 1, 2, 3]))):
        if rng.random() < 0.45:
            if b[:4] in (b"II*\0", b"MM\0*"):
                steps.append(_mutate_tiff_header(b, rng))
            elif b[:4] == b"\x89PNG":
                steps.append(_mutate_png_header(b, rng))
            else:
                steps.append(_mutate_bytes(b, rng))
        else:
            steps.append(_mutate_bytes(b, rng))
    return name, bytes(b), "; ".join(steps)


# ----------------------------------------------------------------------------------------------------------
# the oracle


def check_decode(path: Path, data: bytes) -> tuple[str, str | None]:
    """Decode one file; returns (outcome, failure message or None). Outcomes: ok, ValueError, FileNotFoundError."""
    from phenovec import _core

    t = time.perf_counter()
    try:
        a = _core.decode_image(str(path))
    except (ValueError, FileNotFoundError) as e:
        dt = time.perf_counter() - t
        kind = type(e).__name__
        if path.name not in str(e):
            return kind, f"{kind} message does not name the file: {e}"
        if dt > CASE_LIMIT_S:
            return kind, f"took {dt:.2f} s"
        return kind, None
    except BaseException as e:  # noqa: BLE001 - any other exception (PanicException included) is a finding
        return "other", f"{type(e).__module__}.{type(e).__name__}: {e}"
    dt = time.perf_counter() - t
    if dt > CASE_LIMIT_S:
        return "ok", f"took {dt:.2f} s"
    if not isinstance(a, np.ndarray) or a.dtype != np.uint16 or a.ndim != 2 or not a.flags.c_contiguous:
        return "ok", f"decoded to {type(a).__name__} {getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}"
    want = declared_shape(data)
    if want is None:
        return "ok", f"decoded {a.shape} but the header declares no readable size"
    if tuple(a.shape) != tuple(want):
        return "ok", f"decoded shape {a.shape} but the header declares (height, width) = {want}"
    return "ok", None


def run_cases(seed: int, start: int, stop: int, workdir: Path, state: Path | None) -> dict:
    """Decode cases [start, stop) in this process; the index of the case being decoded is written to
    ``state`` first (for the watching parent)."""
    from phenovec import _core

    bases = base_files()
    for name, data, img in bases:  # the bases themselves must decode exactly
        p = workdir / f"base_{name}.bin"
        p.write_bytes(data)
        got = _core.decode_image(str(p))
        if got.shape != img.shape or not np.array_equal(got, img.astype(np.uint16)):
            raise AssertionError(f"base file {name} does not decode to its pixels")
        p.unlink()
    counts: dict[str, int] = {}
    failures = []
    fd = os.open(state, os.O_WRONLY | os.O_CREAT) if state else None
    t0 = time.perf_counter()
    for i in range(start, stop):
        base, data, desc = make_case(bases, seed, i)
        path = workdir / f"fuzz_s{seed}_c{i}.{'png' if base.startswith('png') else 'tif'}"
        path.write_bytes(data)
        if fd is not None:
            os.pwrite(fd, f"{i:<20d}".encode(), 0)
        outcome, fail = check_decode(path, data)
        path.unlink()
        counts[outcome] = counts.get(outcome, 0) + 1
        if fail:
            failures.append({"case": i, "seed": seed, "base": base, "mutation": desc, "failure": fail})
            if fd is not None:  # streamed, so a later crash of this child does not lose it
                print("FAILURE " + json.dumps(failures[-1]), flush=True)
    if fd is not None:
        os.close(fd)
    return {"cases": stop - start, "seconds": time.perf_counter() - t0, "outcomes": counts, "failures": failures}


def fuzz(seed: int, cases: int, start: int = 0, hang_s: float = CASE_LIMIT_S, timeout: float = 3600) -> dict:
    """Run cases [start, start + cases) in child processes; a crash or a hang (no progress for ``hang_s``)
    is recorded as a failure of that case and the run resumes after it."""
    t0 = time.perf_counter()
    summary = {"seed": seed, "start": start, "cases": cases, "outcomes": {}, "failures": []}
    i, stop = start, start + cases
    with tempfile.TemporaryDirectory(prefix="phenovec-fuzz-") as tmp:
        state = Path(tmp) / "state"
        while i < stop:
            state.write_text("")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--seed", str(seed), "--start", str(i),
                   "--cases", str(stop - i), "--workdir", tmp, "--state", str(state)]
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            last, since = None, time.perf_counter()
            while child.poll() is None:
                time.sleep(0.05)
                cur = state.read_text().strip()
                if cur != last:
                    last, since = cur, time.perf_counter()
                stuck = last and time.perf_counter() - since > hang_s
                if stuck or time.perf_counter() - t0 > timeout:
                    child.kill()
                    break
            out, err = child.communicate()
            if child.returncode == 0:
                part = json.loads(out.strip().splitlines()[-1])
                for k, v in part["outcomes"].items():
                    summary["outcomes"][k] = summary["outcomes"].get(k, 0) + v
                summary["failures"] += part["failures"]
                break
            cur = state.read_text().strip()
            if not cur:  # died before the first case: not a fuzz finding, a broken harness
                raise RuntimeError(f"fuzz child failed before its first case (rc {child.returncode}):\n{err[-3000:]}")
            bad = int(cur)
            summary["failures"] += [json.loads(line[8:]) for line in out.splitlines() if line.startswith("FAILURE ")]
            base, _, desc = make_case(base_files(), seed, bad)
            what = "hang" if child.returncode == -9 else f"crash (rc {child.returncode})"
            summary["failures"].append({"case": bad, "seed": seed, "base": base, "mutation": desc, "failure": what,
                                        "stderr": err[-2000:]})
            summary["outcomes"]["crash_or_hang"] = summary["outcomes"].get("crash_or_hang", 0) + 1
            # the cases the dead child finished before `bad` passed or are in failures; their outcomes are lost
            summary["outcomes"]["uncounted"] = summary["outcomes"].get("uncounted", 0) + bad - i
            i = bad + 1
            if time.perf_counter() - t0 > timeout:
                summary["failures"].append({"failure": f"run stopped after {timeout:.0f} s at case {i}"})
                break
    summary["seconds"] = time.perf_counter() - t0
    summary["cases_per_s"] = cases / summary["seconds"]
    return summary


# ----------------------------------------------------------------------------------------------------------
# tests


def test_fuzz_decode_1000_cases():
    s = fuzz(seed=0, cases=1000, timeout=240)
    assert not s["failures"], json.dumps(s["failures"][:10], indent=1)
    # not vacuous: the mutations produce both decodable files and rejected ones
    assert s["outcomes"].get("ok", 0) >= 50 and s["outcomes"].get("ValueError", 0) >= 300, s["outcomes"]


# Cases the fuzz found (seed, case): fixed in rust/src/image.rs, kept as regressions.
REGRESSIONS = [
    (2, 5924),  # one byte turned SamplesPerPixel into a 2nd ImageWidth = 1: decoded 23 x 1 instead of an error
    (1, 15673),  # a duplicated range left two ImageWidth entries (32768 and 21): decoded with the last one
]


def test_fuzz_regressions(tmp_path):
    bases = base_files()
    for seed, i in REGRESSIONS:
        base, data, desc = make_case(bases, seed, i)
        p = tmp_path / f"fuzz_s{seed}_c{i}.tif"
        p.write_bytes(data)
        assert check_decode(p, data) == ("ValueError", None), (seed, i, base, desc)


def test_oracle_catches_wrong_outcomes(tmp_path):
    """The checker itself: a wrong size, an unnamed error, a non-image and a missing file."""
    name, data, img = base_files()[0]
    p = tmp_path / "good.tif"
    p.write_bytes(data)
    assert check_decode(p, data) == ("ok", None)
    # header declares a different size than what decodes: flagged
    h, w = img.shape
    wrong = _png(np.zeros((h + 1, w), np.uint16))
    assert "declares" in check_decode(p, wrong)[1]
    p.write_bytes(b"not an image at all")
    assert check_decode(p, b"") == ("ValueError", None)
    assert check_decode(tmp_path / "missing.tif", b"") == ("FileNotFoundError", None)


def test_cases_are_deterministic():
    bases = base_files()
    assert [make_case(bases, 3, i) for i in range(20)] == [make_case(bases, 3, i) for i in range(20)]
    assert make_case(bases, 3, 0) != make_case(bases, 4, 0) or make_case(bases, 3, 1) != make_case(bases, 4, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--case", type=int, help="run (in this process) and describe one case only")
    ap.add_argument("--save", help="with --case: also write the case's file into this folder")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", help="also write the JSON summary here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        res = run_cases(a.seed, a.start, a.start + a.cases, Path(a.workdir), Path(a.state))
        print(json.dumps(res))
        return 0
    if a.case is not None:
        base, data, desc = make_case(base_files(), a.seed, a.case)
        print(f"case {a.case} seed {a.seed}: base {base}, mutation {desc}, {len(data)} bytes", flush=True)
        folder = Path(a.save) if a.save else Path(tempfile.mkdtemp(prefix="phenovec-fuzz-case-"))
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"fuzz_s{a.seed}_c{a.case}.{'png' if base.startswith('png') else 'tif'}"
        p.write_bytes(data)
        print(json.dumps({"path": str(p), "outcome": check_decode(p, data)}))
        return 0
    s = fuzz(a.seed, a.cases, a.start, timeout=a.timeout)
    text = json.dumps(s, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
