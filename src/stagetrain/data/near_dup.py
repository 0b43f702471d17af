"""Near-duplicate images: a 256-bit perceptual hash and the pairs within a Hamming distance.

Exact dedupe (sha256 of the bytes) misses a re-encoded, resized or lightly edited copy. The hash
here is pHash at ``hash_size=16`` (after ``imagehash.phash``; orthonormal DCT): the image in grey, squashed
to :data:`THUMB` x :data:`THUMB` px with a box filter, its 2-D DCT, and one bit per coefficient of
the lowest :data:`BLOCK` x :data:`BLOCK` frequencies: above their median or not. It ignores size,
aspect ratio, JPEG quality and global brightness/contrast, and changes with content, position and
crops. The thumbnail comes from the decode that validation does anyway: a JPEG is drafted to
libjpeg's smallest DCT scale that still gives :data:`DRAFT` px a side (full size up to 255 px, 1/2
at 256-511 px, ...), then box-filtered down: drafting straight to 64 px put resized copies of a
256 px image up to 26 bits apart, 18 with this 2x margin (measured on 3,000 renders while choosing it).

Why 256 bits and not the common 64: on synthetic worlds (one domain = one background look),
different images at 64 bits sit as close as copies do (in the first, simpler world a sole cone at
the same spot on the same gradient was hash-identical; 15% of 3,000 images had another within 4
of 64 bits; in the current world, at 64 bits, 0.8% of 3,000 images have another within 6 bits,
where copies reach 6). At 256 bits, resized, re-encoded, brightened or blurred copies of the
current world's 256 px images stay within 14 bits, and no two of 3,000 different renders come
closer than 50 (4.5 million pairs; ``bench/near_dup.py`` prints these figures): the default
threshold, 24, has room on both sides. Not caught: crops of a few percent (24-78 bits) and mirror images.

Pairs are found by brute force over packed words (NumPy popcount): two of the four words' distance
bounds the full one from below and discards nearly every pair before the full count (one word let
4-10% of pairs of different images through at 24 bits).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB = 64  # side of the grey thumbnail the DCT runs on (imagehash's highfreq_factor 4 x hash_size 16)
DRAFT = 2 * THUMB  # a JPEG is decoded at the smallest DCT scale keeping this many px a side, then box-filtered to THUMB
BLOCK = 16  # lowest BLOCK x BLOCK DCT frequencies: the hash's bits
BITS = BLOCK * BLOCK
WORDS = BITS // 64
EMPTY = np.zeros((0, WORDS), dtype=np.uint64)
BOUND_WORDS = (2, 3)  # words whose distance bounds the full one: the higher frequencies, least alike across images
CHUNK = 64  # rows compared at once against all others: temporaries of CHUNK x n x 10 bytes (15 MB for 22,725 images)
ORIENTATION_TRANSPOSE = {  # EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the orthonormal DCT-II matrix of size ``n``: only the frequencies the hash keeps."""
    x = np.arange(n)
    rows = np.cos(np.pi * (2 * x[None, :] + 1) * np.arange(k)[:, None] / (2 * n)) * np.sqrt(2 / n)
    rows[0] /= np.sqrt(2)
    return rows


_DCT = _dct_rows(THUMB, BLOCK).astype(np.float32)
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # 16/32-bit grey: hashed as floats (converting to L would clip)


def perceptual_hash(image: Image.Image, orientation: int | None = None) -> bytes:
    """The 256-bit pHash of a decoded image (``BITS / 8`` bytes), upright by its EXIF ``orientation``.

    Args:
        image: a loaded image of any mode (a JPEG may be drafted: the hash needs :data:`DRAFT` px).
        orientation: the EXIF orientation tag, so that a copy saved upright hashes like the tagged original.
    """
    grey = image.convert("F") if image.mode in WIDE_MODES else image if image.mode == "L" else image.convert("L")
    if grey.width % THUMB == 0 and grey.height % THUMB == 0 and min(grey.size) >= THUMB:
        grey = grey.reduce((grey.width // THUMB, grey.height // THUMB))  # the same box filter, 4x faster than resize's
    if grey.size != (THUMB, THUMB):
        grey = grey.resize((THUMB, THUMB), Image.Resampling.BOX if min(grey.size) >= THUMB else Image.Resampling.BILINEAR)
    if orientation in ORIENTATION_TRANSPOSE:
        grey = grey.transpose(ORIENTATION_TRANSPOSE[orientation])
    pixels = np.frombuffer(grey.tobytes(), np.float32 if grey.mode == "F" else np.uint8).reshape(THUMB, THUMB)
    coeffs = (_DCT @ pixels.astype(np.float32) @ _DCT.T).ravel()
    middle = np.partition(coeffs, (BITS // 2 - 1, BITS // 2))[BITS // 2 - 1 : BITS // 2 + 1].mean()  # the median, 10x faster
    return np.packbits(coeffs > middle).tobytes()


def as_array(hashes: list[bytes]) -> np.ndarray:
    """Hashes as an ``(n, WORDS)`` uint64 array (the form :func:`pairs` compares)."""
    if not hashes:
        return EMPTY
    return np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(len(hashes), WORDS)


def distance(a: bytes, b: bytes) -> int:
    """Hamming distance of two hashes, in bits."""
    return int(np.bitwise_count(as_array([a]) ^ as_array([b])).sum())


def pairs(a: np.ndarray, b: np.ndarray | None, max_distance: int) -> list[tuple[int, int, int]]:
    """Every pair within ``max_distance`` bits: ``(i, j, distance)``, ``i`` a row of ``a``, ``j`` of ``b``.

    Args:
        a: hashes, ``(n, WORDS)`` uint64.
        b: other hashes, or None for the pairs within ``a`` (then ``i < j``).
        max_distance: the Hamming threshold, inclusive.

    Returns:
        The pairs sorted by ``(i, j)``.
    """
    within = b is None
    b = a if within else b
    words = [np.ascontiguousarray(b[:, w]) for w in BOUND_WORDS]
    xor = np.empty(CHUNK * len(b), dtype=np.uint64)  # reused buffers: allocating per chunk cost as much as the work
    bits = np.empty(CHUNK * len(b), dtype=np.uint8)
    bound = np.empty(CHUNK * len(b), dtype=np.uint8)
    close = np.empty(CHUNK * len(b), dtype=bool)
    found = []
    for start in range(0, len(a), CHUNK):
        rows = a[start : start + CHUNK]
        offset = start if within else 0  # within: each row against itself and later rows only
        shape = (len(rows), len(b) - offset)
        if not all(shape):
            continue
        size = shape[0] * shape[1]
        for k, (w, cols) in enumerate(zip(BOUND_WORDS, words, strict=True)):  # two words' distance: a lower bound of the full one
            np.bitwise_xor(rows[:, w, None], cols[None, offset:], out=xor[:size].reshape(shape))
            np.bitwise_count(xor[:size], out=bound[:size] if k == 0 else bits[:size])
            if k:
                np.add(bound[:size], bits[:size], out=bound[:size])
        np.less_equal(bound[:size], max_distance, out=close[:size])
        i, j = np.divmod(np.flatnonzero(close[:size]), shape[1])
        if within:
            keep = start + i < offset + j
            i, j = i[keep], j[keep]
        full = np.bitwise_count(rows[i] ^ b[offset + j]).sum(axis=1, dtype=np.int64)
        near = full <= max_distance
        found += zip((start + i[near]).tolist(), (offset + j[near]).tolist(), full[near].tolist(), strict=True)
    return sorted(found)
