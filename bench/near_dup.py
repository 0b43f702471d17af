"""Near-duplicate threshold: distances of true copies vs different images of the synthetic world, side by side.

    .venv/bin/python bench/near_dup.py                    # 500 images per domain, 256 px
    .venv/bin/python bench/near_dup.py --images 1500      # 4.5 million pairs of different images

Renders ``--images`` images of each synthetic domain (data/synthetic.py as it is now; one domain
shares one look, the hard case for a perceptual hash), hashes them as organize does
(``validate.check_image(..., phash=True)``), and prints:

* different images: the distribution of pairwise Hamming distances (same domain and across), the
  pairs within the threshold (``organize.near_duplicates`` in params.yaml) and the images that have one;
* copies of a sample of them, edited as copies are (resized, re-encoded, brightened, ...): the
  distance to their original and the share caught by the threshold;
* other pictures of the same scene (shifted by a quarter, cropped, mirrored): the smallest distance;
* the same for the common 64-bit pHash (8x8 of a 32 px thumbnail, scaled threshold): why 256 bits.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageEnhance, ImageFilter
from scipy.fft import dctn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from stagetrain.config import parse
from stagetrain.data import near_dup, synthetic, validate


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float, resample=Image.Resampling.LANCZOS) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), resample)


COPIES = {  # what a copy of a published image looks like
    "resized 0.5, JPEG 75": lambda im: _jpeg(_scaled(im, 0.5), 75),
    "resized 0.7, JPEG 85": lambda im: _jpeg(_scaled(im, 0.7, Image.Resampling.BICUBIC), 85),
    "upscaled 1.5, JPEG 90": lambda im: _jpeg(_scaled(im, 1.5, Image.Resampling.BICUBIC), 90),
    "re-encoded JPEG 60": lambda im: _jpeg(im, 60),
    "brightness +15%": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.15), 90),
    "contrast -15%": lambda im: _jpeg(ImageEnhance.Contrast(im).enhance(0.85), 90),
    "blurred (1 px)": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(1)), 90),
    "squashed to 7/8 width": lambda im: _jpeg(im.resize((im.width * 7 // 8, im.height)), 85),
    "cropped 3% a side": lambda im: _jpeg(
        im.crop((im.width * 3 // 100, im.height * 3 // 100, im.width * 97 // 100, im.height * 97 // 100)), 90
    ),
}
OTHER_VIEWS = {  # another picture of the same scene: must not match
    "shifted by a quarter": lambda im: _jpeg(im.crop((im.width // 4, 0, im.width, im.height)).resize(im.size), 90),
    "cropped to 5/8": lambda im: _jpeg(im.crop((0, 0, im.width * 5 // 8, im.height * 5 // 8)).resize(im.size), 90),
    "mirrored": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
}


def phash64(path: str | Path) -> bytes:
    """The common 64-bit pHash (imagehash's default: 8x8 DCT of a 32 px grey thumbnail), from the same kind of decode."""
    with Image.open(path) as image:
        image.draft("L", (near_dup.DRAFT // 2, near_dup.DRAFT // 2))
        grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    coeffs = dctn(grey, norm="ortho")[:8, :8]
    return np.packbits(coeffs > np.median(coeffs)).tobytes() + bytes(24)  # padded to the 256-bit layout


def distances(hashes: list[bytes]) -> np.ndarray:
    """Full pairwise Hamming matrix (fine for a few thousand images)."""
    packed = near_dup.as_array(hashes)
    return np.stack([np.bitwise_count(packed[i] ^ packed).sum(axis=1) for i in range(len(packed))])


def summarise(d: np.ndarray, domains: np.ndarray, limit: int) -> None:
    upper = np.triu_indices(len(d), 1)
    values, same = d[upper], domains[upper[0]] == domains[upper[1]]
    for label, chosen in (("same domain", same), ("across domains", ~same)):
        v = values[chosen]
        q = {p: np.quantile(v, p) for p in (1e-6, 1e-5, 1e-4, 1e-3, 0.5)}
        print(
            f"    {label:14s} {len(v):>9,} pairs: min {v.min()}, quantiles 1e-6 {q[1e-6]:.0f}, 1e-5 {q[1e-5]:.0f}, "
            f"1e-4 {q[1e-4]:.0f}, 1e-3 {q[1e-3]:.0f}, median {q[0.5]:.0f}; within {limit}: {(v <= limit).sum()} pairs"
        )
    nearest = np.where(np.eye(len(d), dtype=bool), 10**6, d).min(axis=1)
    print(f"    images with another within {limit} bits: {(nearest <= limit).sum()} of {len(d)} ({(nearest <= limit).mean():.2%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=500, help="images per domain (default 500)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256, the synthetic datasets' size)")
    p.add_argument("--copies", type=int, default=100, help="images whose edited copies are measured (default 100)")
    args = p.parse_args()
    cfg = parse(yaml.safe_load((REPO / "params.yaml").read_text()))
    limit = cfg.organize.near_duplicates or 24
    with tempfile.TemporaryDirectory(prefix="bench-near-dup-") as tmp:
        start, files, images = time.perf_counter(), [], []
        for domain in synthetic.DOMAINS:
            for i in range(args.images):
                image = synthetic.render(cfg.seed, domain, i, args.size, cfg.classes)[0]
                files.append(Path(tmp) / f"{domain}_{i:05d}.jpg")
                files[-1].write_bytes(_jpeg(image, 95))
                images.append(image)
        domains = np.array([f.name.split("_")[0] for f in files])
        print(
            f"{len(files)} renders, {args.size} px, of domains {', '.join(synthetic.DOMAINS)} in {time.perf_counter() - start:.0f} s; threshold {limit} bits"
        )
        sample = range(0, len(files), max(1, len(files) // args.copies))
        edits = {name: [Path(tmp) / f"edit{k}_{i}.jpg" for i in sample] for k, name in enumerate((*COPIES, *OTHER_VIEWS))}
        for name, paths in edits.items():
            edit = {**COPIES, **OTHER_VIEWS}[name]
            for i, path in zip(sample, paths, strict=True):
                path.write_bytes(edit(images[i]))
        for label, hash_of, scaled in (
            (f"pHash {near_dup.BITS} bits (organize)", lambda f: validate.check_image(f, phash=True).phash, limit),
            ("pHash 64 bits (the common size)", phash64, round(limit * 64 / near_dup.BITS)),
        ):
            hashes = [hash_of(f) for f in files]
            print(f"{label}, threshold {scaled}:")
            print("  different images:")
            summarise(distances(hashes), domains, scaled)
            print("  copies (distance to the original: min / median / max, caught):")
            for name, paths in edits.items():
                got = np.array([near_dup.distance(hashes[i], hash_of(path)) for i, path in zip(sample, paths, strict=True)])
                caught = f"caught {(got <= scaled).mean():.0%}" if name in COPIES else "must not match"
                print(f"    {name:24s} {got.min():3d} / {np.median(got):5.1f} / {got.max():3d}  {caught}")


if __name__ == "__main__":
    main()
