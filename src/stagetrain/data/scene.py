"""The synthetic world's looks: per-domain camera and weather, the ground plane, and the shapes of cones and distractors.

:mod:`stagetrain.data.synthetic` places objects and decides labels; this module only says how
things look. A pinhole camera at height ``h`` above a flat ground, looking along it with the horizon
at row ``y_h``, sees a ground point at distance ``Z`` and lateral offset ``X`` at
``x = cx + f X / Z``, ``y = y_h + f h / Z``; an object ``H`` metres tall spans ``f H / Z`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """One visual domain: a camera rig and the weather and lens it sees through (ranges are sampled per image)."""

    camera_height: Range  # metres above the ground
    fov: Range  # horizontal field of view, degrees (wider = far cones smaller)
    horizon: Range  # horizon row as a fraction of the image height
    sky: tuple[RGB, RGB]  # sky colour at the top and at the horizon
    treeline: RGB  # the band of trees / buildings standing on the horizon
    track: RGB  # the driven surface
    verge: RGB  # the ground beside the track (grass, gravel, a car park)
    texture: float  # amplitude of the ground's texture noise
    wet: float  # 0..1: dark puddle patches on the ground
    shadow: float  # 0..1: darkness of cast shadows (0 = overcast, none)
    shade: float  # brightness of an object's side turned from the light
    fog: Range  # 0..1: how far distant objects fade to the fog colour
    fog_colour: RGB
    brightness: Range  # global light multiplier
    tint: tuple[float, float, float]  # per-channel colour cast
    vignette: float  # 0..1: darkening of the corners (cheap lens)
    rain: int  # at most this many rain streaks
    noise: Range  # std of Gaussian pixel noise
    blur: Range  # Gaussian blur radius, as a fraction of 256 px
    jpeg: tuple[int, int]  # JPEG quality range (artefacts baked into the image)


DOMAINS = {
    # a sunny test track from a low car camera: bright, sharp, hard shadows, grass verges, clean JPEGs
    "source": Domain(
        camera_height=(0.9, 1.1), fov=(45, 58), horizon=(0.36, 0.46),
        sky=((110, 160, 225), (195, 215, 240)), treeline=(45, 75, 40), track=(108, 108, 112), verge=(95, 140, 70),
        texture=10.0, wet=0.0, shadow=0.45, shade=0.72, fog=(0.0, 0.1), fog_colour=(205, 215, 235),
        brightness=(0.95, 1.15), tint=(1.0, 1.0, 1.0), vignette=0.0, rain=0, noise=(1.0, 4.0), blur=(0.0, 0.4), jpeg=(85, 95),
    ),
    # a wet car park at dusk from a high, wider-angle camera: dark, colour-cast, foggy, rainy, noisy, blurred, blocky JPEGs
    "target": Domain(
        camera_height=(1.3, 1.7), fov=(58, 72), horizon=(0.26, 0.36),
        sky=((90, 95, 108), (150, 150, 156)), treeline=(35, 38, 44), track=(80, 80, 86), verge=(90, 90, 94),
        texture=16.0, wet=0.5, shadow=0.0, shade=0.85, fog=(0.15, 0.4), fog_colour=(140, 140, 148),
        brightness=(0.7, 1.0), tint=(1.05, 0.95, 0.85), vignette=0.35, rain=60, noise=(5.0, 10.0), blur=(0.5, 1.2), jpeg=(40, 75),
    ),
}  # fmt: skip

# Cones, by canonical class: body RGB, stripe RGB, stripe count, height in metres, body half-width at the base
# per unit of height. Formula Student cones: small 325 mm, large orange 505 mm and slimmer, with two stripes.
CONE_STYLES = {
    "blue_cone": ((30, 70, 200), (245, 245, 245), 1, 0.325, 0.30),
    "yellow_cone": ((235, 205, 30), (25, 25, 25), 1, 0.325, 0.30),
    "orange_cone": ((245, 115, 20), (245, 245, 245), 1, 0.325, 0.30),
    "large_orange_cone": ((245, 115, 20), (245, 245, 245), 2, 0.505, 0.24),
    "unknown_cone": ((140, 140, 150), None, 0, 0.325, 0.30),
}
# Distractors (never labelled): height and width in metres; their colours are the cones' colours.
DISTRACTOR_SIZES = {"barrel": (0.9, 0.58), "sign": (1.3, 0.6), "person": (1.75, 0.5), "tyres": (0.6, 0.6), "tape": (0.0, 0.0)}
CONE_COLOURS = ((245, 115, 20), (235, 205, 30), (30, 70, 200), (230, 60, 30))

Shape = tuple[str, object, RGB]  # ("poly", points, colour) | ("ellipse", bbox, colour)


@dataclass(frozen=True)
class Camera:
    size: int
    height: float  # metres
    focal: float  # pixels
    horizon: float  # row

    def project(self, x_m: float, z_m: float) -> tuple[float, float]:
        return self.size / 2 + self.focal * x_m / z_m, self.horizon + self.focal * self.height / z_m

    def pixels(self, metres: float, z_m: float) -> float:
        return self.focal * metres / z_m


def camera(rng: np.random.Generator, look: Domain, size: int) -> Camera:
    fov = np.radians(rng.uniform(*look.fov))
    return Camera(size, float(rng.uniform(*look.camera_height)), size / 2 / np.tan(fov / 2), float(rng.uniform(*look.horizon)) * size)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a ``cells``-square random grid upsampled bilinearly."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BILINEAR), dtype=np.float32) / 127.5 - 1


def background(rng: np.random.Generator, look: Domain, cam: Camera, track_x) -> np.ndarray:
    """Sky, treeline and textured ground (track vs verge from ``track_x(Z) -> (centre, half width)``), float RGB."""
    size = cam.size
    rows = np.arange(size, dtype=np.float32)[:, None]
    horizon = int(cam.horizon)
    img = np.zeros((size, size, 3), dtype=np.float32)
    t = np.clip(rows[:horizon] / max(cam.horizon, 1), 0, 1)[..., None]
    img[:horizon] = np.array(look.sky[0]) * (1 - t) + np.array(look.sky[1]) * t
    img[:horizon] += 12 * _noise(rng, size, 6)[:horizon, :, None]  # clouds
    z = cam.focal * cam.height / np.maximum(rows - cam.horizon, 0.5)  # ground distance per row
    x_m = (np.arange(size, dtype=np.float32)[None, :] - size / 2) * z / cam.focal
    centre, half = track_x(z)
    on_track = (np.abs(x_m - centre) < half)[..., None]
    ground = np.where(on_track, np.array(look.track, np.float32), np.array(look.verge, np.float32))
    near = np.clip((rows - cam.horizon) / (size - cam.horizon), 0, 1)[..., None]  # texture fades with distance
    texture = look.texture * (0.6 * _noise(rng, size, 24) + 0.4 * rng.standard_normal((size, size)).astype(np.float32))
    ground = ground * (0.8 + 0.2 * near) + texture[..., None] * (0.3 + 0.7 * near)
    if look.wet:
        puddles = np.clip(_noise(rng, size, 10) - (1 - look.wet), 0, 1)[..., None]
        ground = ground * (1 - 0.6 * puddles)
    img[horizon:] = ground[horizon:]
    edge = (cam.horizon - size * rng.uniform(0.02, 0.08) * (1.2 + _noise(rng, size, 12)[0])).astype(int)  # a ragged treeline
    trees = (rows[:horizon] >= edge[None, :])[..., None]
    img[:horizon] = np.where(
        trees, np.array(look.treeline, np.float32) * (1 + 0.15 * _noise(rng, size, 32)[:horizon, :, None]), img[:horizon]
    )
    return img


def fogged(colour: RGB, look: Domain, fog: float, z_m: float) -> RGB:
    a = fog * (1 - np.exp(-z_m / 15))
    return tuple(int(c * (1 - a) + f * a) for c, f in zip(colour, look.fog_colour))


def cone_shapes(style: tuple, body: RGB, x: float, base_y: float, height: float, shade: float) -> list[Shape]:
    """The cone's silhouette pieces (body, shaded side, stripes, foot plate), back to front."""
    _, stripe, stripes, _, half_w = style
    half_base, half_top, top_y = height * half_w, height * 0.05, base_y - height
    dark = tuple(int(c * shade) for c in body)
    shapes: list[Shape] = [
        ("poly", [(x - half_base, base_y), (x + half_base, base_y), (x + half_top, top_y), (x - half_top, top_y)], body),
        ("poly", [(x + half_base * 0.2, base_y), (x + half_base, base_y), (x + half_top, top_y), (x + half_top * 0.2, top_y)], dark),
    ]
    for k in range(stripes):  # stripes at 38% (and 63%) of the height from the top
        f0 = 0.38 + 0.25 * k
        f1 = f0 + 0.14
        w0, w1 = half_top + (half_base - half_top) * f0, half_top + (half_base - half_top) * f1
        y0, y1 = top_y + height * f0, top_y + height * f1
        shapes.append(("poly", [(x - w0, y0), (x + w0, y0), (x + w1, y1), (x - w1, y1)], stripe))
    foot_h, foot_w = max(1.0, height * 0.06), half_base * 1.25
    shapes.append(
        ("poly", [(x - foot_w, base_y - foot_h), (x + foot_w, base_y - foot_h), (x + foot_w, base_y), (x - foot_w, base_y)], dark)
    )
    return shapes


def distractor_shapes(kind: str, rng: np.random.Generator, x: float, base_y: float, height: float, width: float) -> list[Shape]:
    """A cone-coloured object that is not a cone: barrel, sign, person or tyre stack."""
    colour, white = CONE_COLOURS[rng.integers(len(CONE_COLOURS))], (235, 235, 235)
    left, right, top = x - width / 2, x + width / 2, base_y - height
    if kind == "barrel":
        shapes = [("poly", [(left, top), (right, top), (right, base_y), (left, base_y)], colour)]
        for f in (0.25, 0.6):
            shapes.append(
                (
                    "poly",
                    [
                        (left, top + height * f),
                        (right, top + height * f),
                        (right, top + height * (f + 0.1)),
                        (left, top + height * (f + 0.1)),
                    ],
                    white,
                )
            )
        return shapes
    if kind == "sign":
        post = max(1.0, width * 0.08)
        board = [(left, top), (right, top), (right, top + width), (left, top + width)]
        if rng.random() < 0.5:
            board = [(x, top), (right, top + width), (left, top + width)]  # a warning triangle
        return [("poly", [(x - post, top), (x + post, top), (x + post, base_y), (x - post, base_y)], (90, 90, 90)), ("poly", board, colour)]
    if kind == "person":
        head = width * 0.22
        legs = (40, 40, 55)
        return [
            (
                "poly",
                [
                    (left + width * 0.2, base_y - height * 0.48),
                    (right - width * 0.2, base_y - height * 0.48),
                    (right - width * 0.2, base_y),
                    (left + width * 0.2, base_y),
                ],
                legs,
            ),
            (
                "poly",
                [
                    (left, top + head * 2),
                    (right, top + head * 2),
                    (right - width * 0.1, base_y - height * 0.46),
                    (left + width * 0.1, base_y - height * 0.46),
                ],
                colour,
            ),
            ("ellipse", [x - head, top, x + head, top + head * 2.1], (205, 160, 130)),
        ]
    return [("ellipse", [left, base_y - height * (k + 1) / 3, right, base_y - height * k / 3], (30, 30, 32)) for k in range(3)]  # tyres


def draw(draw_on: ImageDraw.ImageDraw, shapes: list[Shape], fill=None, dx: float = 0, dy: float = 0) -> None:
    """Draw ``shapes`` in their colours, or all in ``fill`` (an id mask), shifted by ``(dx, dy)``."""
    for kind, geom, colour in shapes:
        if kind == "poly":
            draw_on.polygon([(px + dx, py + dy) for px, py in geom], fill=colour if fill is None else fill)
        else:
            x0, y0, x1, y1 = geom
            draw_on.ellipse([x0 + dx, y0 + dy, x1 + dx, y1 + dy], fill=colour if fill is None else fill)


def extent(shapes: list[Shape]) -> tuple[float, float, float, float]:
    xs = [p[0] for kind, g, _ in shapes for p in (g if kind == "poly" else [(g[0], g[1]), (g[2], g[3])])]
    ys = [p[1] for kind, g, _ in shapes for p in (g if kind == "poly" else [(g[0], g[1]), (g[2], g[3])])]
    return min(xs), min(ys), max(xs), max(ys)


def area(shapes: list[Shape]) -> int:
    """Pixels the shapes cover when nothing hides them and no border cuts them (drawn on their own small mask)."""
    x0, y0, x1, y1 = extent(shapes)
    left, top = int(np.floor(x0)) - 1, int(np.floor(y0)) - 1  # whole-pixel shift: same rasterisation as in the image
    mask = Image.new("L", (int(np.ceil(x1)) - left + 2, int(np.ceil(y1)) - top + 2))
    draw(ImageDraw.Draw(mask), shapes, fill=1, dx=-left, dy=-top)
    return int(np.count_nonzero(np.asarray(mask)))
