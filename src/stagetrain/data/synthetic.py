"""Deterministic synthetic road-cone images in two visual domains, with YOLO labels.

The embedded default dataset: it lets the whole pipeline run offline in minutes and still pose the
question the product answers (does pre-training on domain A help fine-tuning on domain B?).
``source`` looks like a sunny test track (bright, sharp, green/grey ground); ``target`` like an
overcast or dusk asphalt track (darker, colour-shifted, noisy, slightly blurred). Class identity is
carried by colour and stripes, as on real Formula Student cones.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (body RGB, stripe RGB, stripe count, height scale) per canonical class, in `classes` order.
CONE_STYLES = {
    "blue_cone": ((30, 70, 200), (245, 245, 245), 1, 1.0),
    "yellow_cone": ((235, 205, 30), (25, 25, 25), 1, 1.0),
    "orange_cone": ((245, 115, 20), (245, 245, 245), 1, 1.0),
    "large_orange_cone": ((245, 115, 20), (245, 245, 245), 2, 1.45),
    "unknown_cone": ((140, 140, 150), None, 0, 1.0),
}


@dataclass(frozen=True)
class Domain:
    ground: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colour of the ground gradient
    brightness: tuple[float, float]  # range of a global light multiplier
    tint: tuple[float, float, float]  # per-channel colour cast
    noise: float  # std of Gaussian pixel noise
    blur: tuple[float, float]  # range of Gaussian blur radius


DOMAINS = {
    "source": Domain(((150, 190, 120), (105, 135, 85)), (0.95, 1.15), (1.0, 1.0, 1.0), 4.0, (0.0, 0.3)),
    "target": Domain(((95, 95, 100), (60, 60, 66)), (0.55, 0.85), (1.05, 0.95, 0.85), 10.0, (0.6, 1.3)),
}


def _rng(seed: int, domain: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), index])


def _background(rng: np.random.Generator, size: int, domain: Domain) -> np.ndarray:
    top, bottom = (np.array(c, dtype=np.float32) for c in domain.ground)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = top * (1 - t) + bottom * t + rng.normal(0, 6, size=3).astype(np.float32)
    img = np.broadcast_to(img, (size, size, 3)).copy()
    for _ in range(rng.integers(2, 6)):  # track markings / patches as distractors
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 12, size // 3, 2)
        img[y0 : y0 + h // 6 + 1, x0 : x0 + w] += rng.uniform(-25, 25)
    return img


def _draw_cone(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: tuple, x: float, base_y: float, height: float
) -> tuple[float, float, float, float]:
    body, stripe, stripes, _ = style
    jitter = rng.normal(0, 10, 3)
    body = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(body, jitter))
    half_base, half_top = height * 0.36, height * 0.07
    top_y = base_y - height
    draw.polygon([(x - half_base, base_y), (x + half_base, base_y), (x + half_top, top_y), (x - half_top, top_y)], fill=body)
    for k in range(stripes):  # stripes at 40% (and 65%) of the height from the top
        f0 = 0.38 + 0.25 * k
        f1 = f0 + 0.14
        w0, w1 = half_top + (half_base - half_top) * f0, half_top + (half_base - half_top) * f1
        y0, y1 = top_y + height * f0, top_y + height * f1
        draw.polygon([(x - w0, y0), (x + w0, y0), (x + w1, y1), (x - w1, y1)], fill=stripe)
    foot_h = max(1.0, height * 0.08)
    draw.rectangle([x - half_base * 1.15, base_y - foot_h, x + half_base * 1.15, base_y], fill=tuple(int(c * 0.55) for c in body))
    return x - half_base * 1.15, top_y, x + half_base * 1.15, base_y


def render(
    seed: int, domain: str, index: int, size: int, classes: tuple[str, ...]
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """Render one image and its YOLO boxes ``(class_id, xc, yc, w, h)``, normalised to ``[0, 1]``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; use one of {', '.join(DOMAINS)}")
    look, rng = DOMAINS[domain], _rng(seed, domain, index)
    canvas = Image.fromarray(np.clip(_background(rng, size, look), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    placed, boxes = [], []
    for _ in range(rng.integers(1, 6)):
        class_id = int(rng.integers(len(classes)))
        style = CONE_STYLES.get(classes[class_id], CONE_STYLES["unknown_cone"])
        height = size * rng.uniform(0.14, 0.34) * style[3]
        x, base_y = rng.uniform(0.1, 0.9) * size, rng.uniform(0.35, 0.97) * size
        box = (x - height * 0.42, base_y - height, x + height * 0.42, base_y)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue  # no occlusion: keeps every label fully visible
        placed.append(box)
        x0, y0, x1, y1 = (float(np.clip(v, 0, size)) for v in _draw_cone(draw, rng, style, x, base_y, height))
        boxes.append((class_id, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    pixels = np.asarray(canvas, dtype=np.float32) * rng.uniform(*look.brightness) * np.array(look.tint, dtype=np.float32)
    pixels += rng.normal(0, look.noise, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    blur = rng.uniform(*look.blur)
    return (image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.05 else image), boxes


def generate(out_dir: Path, seed: int, domain: str, images: int, size: int, classes: tuple[str, ...]) -> dict:
    """Write ``images/NNNNN.jpg`` + ``labels/NNNNN.txt`` and a ``data.yaml`` naming the classes."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    boxes_per_class = [0] * len(classes)
    for i in range(images):
        image, boxes = render(seed, domain, i, size, classes)
        image.save(out_dir / "images" / f"{domain}_{i:05d}.jpg", quality=92)
        lines = [f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}" for c, xc, yc, w, h in boxes]
        (out_dir / "labels" / f"{domain}_{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        for c, *_ in boxes:
            boxes_per_class[c] += 1
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    (out_dir / "data.yaml").write_text(f"# synthetic {domain} cones, seed {seed}\nnames:\n{names}\n")
    return {"images": images, "boxes": dict(zip(classes, boxes_per_class))}
