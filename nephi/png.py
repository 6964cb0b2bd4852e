"""A small PNG writer and reader (8-bit RGB or greyscale), zlib and struct only.

The writer chooses a PNG row filter per row (None, Sub, Up, Average or Paeth) by the usual
minimum-sum-of-absolute-differences heuristic, computed for the whole image at once with numpy,
then deflates. The reader decodes what this writer produces (8-bit RGB or greyscale,
non-interlaced, any filter) and is used by the tests and by :mod:`nephi.quicklook`'s checks.

Arrays are (H, W, 3) uint8 for RGB and (H, W) uint8 for greyscale; row 0 is the top of the
picture.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (0 greyscale, 2 truecolour)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _paeth_predictor(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (x.astype(np.int16) for x in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    out = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return out.astype(np.uint8)


def _filtered_rows(raw: np.ndarray, bpp: int) -> np.ndarray:
    """All five filter types of every row: (5, H, W * bpp) uint8 (modulo-256 differences)."""
    h, n = raw.shape
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    up = np.zeros_like(raw)
    up[1:] = raw[:-1]
    up_left = np.zeros_like(raw)
    up_left[1:, bpp:] = raw[:-1, :-bpp]
    average = ((left.astype(np.uint16) + up.astype(np.uint16)) // 2).astype(np.uint8)
    return np.stack([raw, raw - left, raw - up, raw - average,
                     raw - _paeth_predictor(left, up, up_left)])


def encode_png(pixels: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an (H, W, 3) or (H, W) uint8 array; ``level``: zlib level (0-9)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in _COLOUR_TYPE:
        raise ValueError(f"PNG pixels must be (H, W) or (H, W, 3), got {pixels.shape}")
    h, w, channels = pixels.shape
    if h < 1 or w < 1:
        raise ValueError("an empty picture cannot be written")
    raw = np.ascontiguousarray(pixels).reshape(h, w * channels)
    candidates = _filtered_rows(raw, channels)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, H)
    best = cost.argmin(axis=0)
    rows = candidates[best, np.arange(h)]
    body = np.concatenate([best.astype(np.uint8)[:, None], rows], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(body.tobytes(), level)) + _chunk(b"IEND", b""))


def write_png(path: str, pixels: np.ndarray, level: int = 6) -> None:
    """Write ``pixels`` ((H, W, 3) or (H, W) uint8) to ``path`` as a PNG file."""
    data = encode_png(pixels, level)
    with open(path, "wb") as fh:
        fh.write(data)


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a non-interlaced 8-bit RGB or greyscale PNG: (H, W, 3) or (H, W) uint8."""
    if data[:8] != SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"PNG chunk {kind!r}: bad CRC")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    w, h, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour}, "
                         f"interlace {interlace})")
    stream = zlib.decompress(b"".join(idat))
    stride = w * channels
    if len(stream) != h * (stride + 1):
        raise ValueError("PNG image data has the wrong length")
    bpp = channels
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for r in range(h):
        ftype = stream[r * (stride + 1)]
        line = stream[r * (stride + 1) + 1:(r + 1) * (stride + 1)]
        cur = bytearray(line)
        if ftype == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                cur[i] = (cur[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((a + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"PNG row {r}: unknown filter type {ftype}")
        out[r * stride:(r + 1) * stride] = cur
        prev = cur
    pixels = np.frombuffer(bytes(out), dtype=np.uint8)
    return pixels.reshape(h, w, channels) if channels == 3 else pixels.reshape(h, w)


def read_png(path: str) -> np.ndarray:
    """Pixels of a PNG file written by :func:`write_png` (see :func:`decode_png`)."""
    with open(path, "rb") as fh:
        return decode_png(fh.read())
