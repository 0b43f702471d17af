"""Deterministic synthetic Formula Student scenes in two visual domains, with honest YOLO labels.

The embedded default dataset: it lets the whole pipeline run offline in minutes and still pose the
question the product answers (does pre-training on domain A help fine-tuning on a scarce, harder B?).
Each image shows cones on a ground plane in perspective (:mod:`stagetrain.data.scene`: camera height,
field of view and horizon per domain): blue left and yellow right of a track's centre line, orange,
large orange and unknown ones anywhere, some right behind others, and cone-coloured distractors
(barrels, signs, people in hi-vis, tyre stacks, tape on the ground) that are never labelled.
``source`` is a sunny track from a low camera; ``target`` a wet car park at dusk from a high
wide-angle camera, foggy, rainy, noisy, blurred and JPEG-blocky.

Label rule (occlusion and truncation): a cone is drawn only when at least ``min_visible`` of its
silhouette is visible (not hidden by nearer objects, inside the image); then its box is the extent
of its visible pixels, clipped to the image. A cone below the threshold is neither drawn nor
labelled, so every drawn cone has a box and every box covers visible cone. Cones farther than the
distance at which a small cone is ``MIN_HEIGHT`` of the image tall are not placed.

Image ``i`` of split ``s`` is ``render(seed, domain, index_of(s, i), ...)``: the index ranges of
train, val, test and the unlabelled pool never overlap, so the pool's true labels can be rendered
again (a test-only oracle) while ``data/raw`` holds its images only.
"""

from __future__ import annotations

import functools
import io
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from stagetrain import progress
from stagetrain.data import scene
from stagetrain.data.scene import CONE_STYLES, DISTRACTOR_SIZES, DOMAINS

__all__ = ["CONE_STYLES", "DOMAINS", "SPLIT_OFFSETS", "World", "generate", "index_of", "render"]

SPLIT_OFFSETS = {"train": 0, "val": 1 << 32, "test": 2 << 32, "pool": 3 << 32}  # render index of image 0 of each split
MIN_HEIGHT = 0.08  # a small cone is placed only where it is at least this fraction of the image tall
SCATTERED = (("orange_cone", 0.35), ("large_orange_cone", 0.35), ("unknown_cone", 0.3))  # cones off the track lines
DISTRACTORS = (("barrel", 0.3), ("sign", 0.2), ("person", 0.25), ("tyres", 0.1), ("tape", 0.15))


@dataclass(frozen=True)
class World:
    """The knobs of ``datasets.<name>.synthetic`` beyond counts, size and domain (defaults: params.yaml's comments)."""

    cones: int = 12  # at most this many cones per image (track lines and scattered ones together)
    distractors: int = 3  # at most this many cone-coloured distractors per image
    min_visible: float = 0.4  # a cone less visible than this (occluded, cut by the border) is not drawn, so not labelled

    @classmethod
    def of(cls, options: Mapping) -> World:
        return cls(**{k: options[k] for k in ("cones", "distractors", "min_visible") if k in options})


@dataclass
class _Object:
    z: float  # distance, metres: drawing order and occlusion
    shapes: list
    class_id: int | None  # None: a distractor


def index_of(split: str, i: int) -> int:
    """The ``render`` index of image ``i`` of ``split`` (train, val, test or pool)."""
    return SPLIT_OFFSETS[split] + i


def _rng(seed: int, domain: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), index])


def _class_id(classes: tuple[str, ...], name: str, rng: np.random.Generator) -> int:
    return classes.index(name) if name in classes else int(rng.integers(len(classes)))


def _pick(rng: np.random.Generator, table: tuple) -> str:
    names, weights = zip(*table)
    return names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]


def _cone_spots(rng, cam, track_x, z_near, z_far, world, classes) -> list[tuple[float, float, int]]:
    """``(x_m, z_m, class_id)`` of the cones, anywhere in view (some cut by the border, some right behind another).

    Most mark the track: blue left of its centre line, yellow right; the rest are orange, large orange or unknown.
    Distance is log-uniform between the nearest ground the camera sees and the farthest a cone is still placed.
    """
    spots = []
    for _ in range(int(rng.integers(max(1, world.cones // 4), world.cones + 1))):
        if spots and rng.random() < 0.2:  # right behind another cone: partial occlusion
            x, z, _ = spots[int(rng.integers(len(spots)))]
            x, z = x + rng.uniform(-0.15, 0.15), z + rng.uniform(0.3, 1.2)
        else:
            z = float(np.exp(rng.uniform(np.log(z_near), np.log(z_far))))
            x = rng.uniform(-1.1, 1.1) * (cam.size / 2) * z / cam.focal  # a little beyond the borders: truncation
        centre, _ = track_x(z)
        name = ("blue_cone" if x < centre else "yellow_cone") if rng.random() < 0.65 else _pick(rng, SCATTERED)
        spots.append((x, z, _class_id(classes, name, rng)))
    return spots


@functools.cache
def _radius2(size: int) -> np.ndarray:
    """Squared distance from the image centre, 1 in the corners (the vignette's falloff)."""
    return (np.hypot(*np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size))) / np.sqrt(2)) ** 2


def _ids(objects: list[_Object], size: int) -> np.ndarray:
    """Which object each pixel shows (0 = background; object k is id k + 1), objects painted far to near."""
    mask = Image.new("L", (size, size))
    pen = ImageDraw.Draw(mask)
    for oid, obj in enumerate(objects, 1):
        scene.draw(pen, obj.shapes, fill=oid)
    return np.asarray(mask)


def render(
    seed: int, domain: str, index: int, size: int, classes: tuple[str, ...], world: World | None = None
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """Render one image and its YOLO boxes ``(class_id, xc, yc, w, h)``, normalised to ``[0, 1]``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; use one of {', '.join(DOMAINS)}")
    world = world or World()
    look, rng = DOMAINS[domain], _rng(seed, domain, index)
    cam = scene.camera(rng, look, size)
    half, offset, yaw, curve = rng.uniform(1.5, 2.5), rng.uniform(-0.8, 0.8), rng.uniform(-0.15, 0.15), rng.uniform(-0.02, 0.02)

    def track_x(z):
        return offset + yaw * z + curve * z * z, half

    z_near = cam.focal * cam.height / max(size * 1.08 - cam.horizon, 1.0)  # a cone's base just below the bottom border
    z_far = cam.pixels(0.325, 1.0) / (MIN_HEIGHT * size)
    fog, shade = rng.uniform(*look.fog), look.shade
    objects = []
    for x_m, z_m, class_id in _cone_spots(rng, cam, track_x, z_near, z_far, world, classes):
        style = CONE_STYLES.get(classes[class_id], CONE_STYLES["unknown_cone"])
        body = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(style[0], rng.normal(0, 10, 3)))
        x, base_y = cam.project(x_m, z_m)
        shapes = scene.cone_shapes(style, scene.fogged(body, look, fog, z_m), x, base_y, cam.pixels(style[3], z_m), shade)
        objects.append(_Object(z_m, shapes, class_id))
    tapes = []
    for _ in range(rng.integers(0, world.distractors + 1)):
        kind = _pick(rng, DISTRACTORS)
        z_m = float(np.exp(rng.uniform(np.log(z_near), np.log(z_far * 2.5))))
        centre, _ = track_x(z_m)
        side = rng.choice([-1, 1]) * (half + rng.uniform(0.3, 4.0)) if rng.random() < 0.8 else rng.uniform(-half, half)
        if kind == "tape":  # a cone-coloured strip on the ground, drawn with the background
            tapes.append([cam.project(centre + side + d * 0.05, z_m + rng.uniform(-1, 1) * d) for d in (-1, 1)])
            continue
        height, width = DISTRACTOR_SIZES[kind]
        x, base_y = cam.project(centre + side, z_m)
        shapes = scene.distractor_shapes(kind, rng, x, base_y, cam.pixels(height, z_m), cam.pixels(width, z_m))
        objects.append(_Object(z_m, [(k, g, scene.fogged(c, look, fog, z_m)) for k, g, c in shapes], None))
    objects.sort(key=lambda o: -o.z)

    ids = _ids(objects, size)
    seen = np.bincount(ids.ravel(), minlength=len(objects) + 1)
    hidden = {k for k, o in enumerate(objects) if o.class_id is not None and seen[k + 1] < world.min_visible * scene.area(o.shapes)}
    if hidden:  # left out entirely; what they hid is repainted
        objects = [o for k, o in enumerate(objects) if k not in hidden]
        ids = _ids(objects, size)
    boxes = []
    for oid, obj in enumerate(objects, 1):
        if obj.class_id is None:
            continue
        left, top, right, bottom = (int(np.clip(v, 0, size)) for v in np.array(scene.extent(obj.shapes)) + (-2, -2, 3, 3))
        rows, cols = np.nonzero(ids[top:bottom, left:right] == oid)  # only where the shape can be: 10x faster than the image
        x0, x1, y0, y1 = left + cols.min(), left + cols.max() + 1, top + rows.min(), top + rows.max() + 1
        boxes.append((obj.class_id, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))

    pixels = scene.background(rng, look, cam, track_x)
    if look.shadow:
        shadow = Image.new("L", (size, size))
        sun = rng.uniform(-1.2, 1.2)
        for obj in objects:
            x0, y0, x1, y1 = scene.extent(obj.shapes)
            length = (y1 - y0) * 0.5
            ImageDraw.Draw(shadow).polygon(
                [(x0, y1), (x1, y1), (x1 + sun * length, y1 + 0.15 * length), (x0 + sun * length, y1 + 0.15 * length)], fill=255
            )
        pixels *= 1 - look.shadow * np.asarray(shadow, dtype=np.float32)[..., None] / 255
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(canvas)
    for line in tapes:
        pen.line(line, fill=scene.CONE_COLOURS[int(rng.integers(len(scene.CONE_COLOURS)))], width=max(1, size // 128))
    for obj in objects:
        scene.draw(pen, obj.shapes)
    for _ in range(rng.integers(0, look.rain + 1)):  # rain streaks
        x, y, length = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.02, 0.06) * size
        pen.line([(x, y), (x + 0.25 * length, y + length)], fill=(165, 168, 175), width=1)
    pixels = np.asarray(canvas, dtype=np.float32) * rng.uniform(*look.brightness) * np.array(look.tint, dtype=np.float32)
    if look.vignette:
        pixels *= (1 - look.vignette * _radius2(size))[..., None]
    pixels += rng.normal(0, rng.uniform(*look.noise), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    blur = rng.uniform(*look.blur) * size / 256
    image = image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.05 else image
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=int(rng.integers(look.jpeg[0], look.jpeg[1] + 1)))
    return Image.open(encoded).convert("RGB"), boxes


def _write(image_path: Path, label_path: Path | None, image: Image.Image, boxes: list) -> None:
    image.save(image_path, quality=95)  # the domain's own JPEG artefacts are already in the pixels
    if label_path is not None:
        lines = [f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}" for c, xc, yc, w, h in boxes]
        label_path.write_text("\n".join(lines) + ("\n" if lines else ""))


def generate(
    out_dir: Path,
    seed: int,
    domain: str,
    images: int | Mapping[str, int],
    size: int,
    classes: tuple[str, ...],
    world: World | None = None,
    desc: str | None = None,
) -> dict:
    """Write a YOLO dataset and a ``data.yaml`` naming the classes.

    Args:
        images: an int: ``images/<domain>_NNNNN.jpg`` + ``labels/...txt``, no split (organize splits it by ratio);
            or ``{train, val, test, pool}`` counts: ``images/<split>/`` + ``labels/<split>/`` (a split organize keeps)
            and ``pool/<domain>_pool_NNNNN.jpg``, images with no labels anywhere.
        desc: the progress line's name (default ``synthetic <domain>: render``).

    Returns:
        ``{"images": labelled images, "boxes": per class, ...}`` plus ``splits`` and ``pool`` counts for the split form.
    """
    splits = {"": images} if isinstance(images, int) else {s: int(images.get(s, 0)) for s in SPLIT_OFFSETS}
    boxes_per_class = [0] * len(classes)
    rendering = progress.Phase(desc or f"synthetic {domain}: render", sum(splits.values()))
    for split, count in splits.items():
        image_dir = out_dir / ("pool" if split == "pool" else Path("images", split))
        label_dir = None if split == "pool" else out_dir / "labels" / split
        for folder in filter(None, (image_dir, label_dir)):
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, boxes = render(seed, domain, index_of(split, i) if split else i, size, classes, world)
            stem = f"{domain}_{split}_{i:05d}" if split else f"{domain}_{i:05d}"
            _write(image_dir / f"{stem}.jpg", label_dir / f"{stem}.txt" if label_dir else None, image, boxes)
            rendering.update()
            if label_dir:
                for c, *_ in boxes:
                    boxes_per_class[c] += 1
    rendering.close()
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    (out_dir / "data.yaml").write_text(f"# synthetic {domain} cones, seed {seed}\nnames:\n{names}\n")
    summary = {"images": sum(n for s, n in splits.items() if s != "pool"), "boxes": dict(zip(classes, boxes_per_class))}
    if "" not in splits:
        summary.update(splits={s: n for s, n in splits.items() if s != "pool"}, pool=splits["pool"])
    return summary
