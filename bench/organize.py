"""organize throughput on a 22,725-image corpus of small synthetic JPEGs, plus decode checks side by side.

    .venv/bin/python bench/organize.py                 # full size (goal: >= 1,000 images/s on 2 cores)
    .venv/bin/python bench/organize.py --images 2000   # quick

The corpus is built in a temp dir first (not measured): a few hundred distinct rendered cone
images, each written many times with its index in a JPEG comment segment, so every file has its
own bytes (dedupe keeps them all) and the decode cost of a real image of that size. Then
``organize.run`` (read, decode-check, hash, split, hard-link, write labels) is timed with a
process pool and with one process, and the per-image cost of three decode checks is compared on
one core: ``verify()`` (headers only: misses truncation), a full ``load()``, and what organize
does (``validate.check_image``: sha256 + a 1/8-scale DCT ``draft`` decode + the JPEG end check).
Files just written sit in the page cache: disk reads are not part of the figure.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from stagetrain.config import parse
from stagetrain.data import organize, synthetic, validate

DISTINCT = 256  # rendered images; every file is one of them with its own comment bytes


def build_corpus(root: Path, images: int, size: int, classes: tuple[str, ...]) -> int:
    """Write ``images`` unique JPEGs + labels + data.yaml under ``root``; return the total image bytes."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    bases = []
    for i in range(min(images, DISTINCT)):
        image, boxes = synthetic.render(0, "target", i, size, classes)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=92)
        lines = "".join(f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n" for c, xc, yc, w, h in boxes)
        bases.append((buffer.getvalue(), lines))
    total = 0
    for i in range(images):
        jpeg, lines = bases[i % len(bases)]
        comment = f"bench image {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment  # COM right after SOI
        data = jpeg[:2] + segment + jpeg[2:]
        (root / "images" / f"img_{i:06d}.jpg").write_bytes(data)
        (root / "labels" / f"img_{i:06d}.txt").write_text(lines)
        total += len(data)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": list(classes)}))
    return total


def time_organize(cfg, raw: Path, out: Path, workers: int) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of this process and its (reaped) pool workers, and the report."""
    start, cpu = time.perf_counter(), os.times()
    report = organize.run(cfg, "target", raw, out, workers=workers)
    used = sum(os.times()[:4]) - sum(cpu[:4])  # user + system, self + children
    return time.perf_counter() - start, used, report


def per_image_ms(check, files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        check(path)
    return (time.perf_counter() - start) / len(files) * 1e3


def full_load(path: Path) -> None:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()


def verify_only(path: Path) -> None:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.verify()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=22725, help="corpus size (default 22,725)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256, the synthetic datasets' size)")
    p.add_argument("--workers", type=int, default=2, help="organize's process pool (default 2: the CI machine's cores)")
    args = p.parse_args()

    cfg = parse(yaml.safe_load((REPO / "params.yaml").read_text()))
    tmp = Path(tempfile.mkdtemp(prefix="bench-organize-"))
    try:
        start = time.perf_counter()
        total = build_corpus(tmp / "raw", args.images, args.size, cfg.classes)
        built = time.perf_counter() - start
        each = total / args.images / 1024
        print(f"corpus: {args.images} JPEGs {args.size}x{args.size} px, {each:.1f} KiB each, built in {built:.1f} s (not measured)")

        pooled, pooled_cpu, report = time_organize(cfg, tmp / "raw", tmp / "out_pool", args.workers)
        assert sum(report["images"].values()) == args.images and not report["skipped"]
        serial, serial_cpu, _ = time_organize(cfg, tmp / "raw", tmp / "out_one", 1)
        rate, n = args.images / pooled, args.images
        verdict = "met" if rate >= 1000 else "NOT met"
        print(f"organize, {args.workers} workers: {n} images in {pooled:.2f} s = {rate:,.0f} images/s (goal >= 1,000: {verdict})")
        print(f"organize, 1 worker:  {n} images in {serial:.2f} s = {n / serial:,.0f} images/s")
        # CPU per image does not depend on what else runs: on a shared machine it is the figure to compare
        print(f"CPU per image: {pooled_cpu / n * 1e3:.3f} ms with the pool, {serial_cpu / n * 1e3:.3f} ms in one process")
        print(f"pool speed-up {serial / pooled:.2f}x; load average {os.getloadavg()[0]:.1f} on {organize.available_cores()} cores")

        sample = sorted((tmp / "raw/images").iterdir())[: min(args.images, 2000)]
        checks = {"verify()": verify_only, "full load()": full_load, "organize's check": validate.check_image}
        ms = {name: per_image_ms(check, sample) for name, check in checks.items()}
        listed = ", ".join(f"{name} {value:.3f} ms" for name, value in ms.items())
        ratio = ms["organize's check"] / ms["full load()"]
        print(f"decode checks, 1 process, {len(sample)} images: {listed}; organize's check / full load = {ratio:.2f}x")
    finally:
        start = time.perf_counter()
        shutil.rmtree(tmp)  # on a busy disk, unlinking 6 files per image can take minutes: said, not hidden
        print(f"temp corpus removed in {time.perf_counter() - start:.1f} s (not measured)")


if __name__ == "__main__":
    main()
