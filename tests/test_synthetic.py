"""The embedded synthetic world: deterministic, honestly labelled, in perspective, with occlusion, truncation,
distractors and two distinct domains; the fixed-split form with its unlabelled pool."""

from __future__ import annotations

import io
import itertools

import numpy as np

from stagetrain.data.synthetic import World, generate, index_of, render

CLASSES = ("blue_cone", "yellow_cone", "orange_cone", "large_orange_cone", "unknown_cone")
SPLITS = {"train": 6, "val": 2, "test": 3, "pool": 4}


def labels(seed: int, domain: str, images: int, size: int = 128, world: World | None = None) -> list[list[tuple]]:
    return [render(seed, domain, i, size, CLASSES, world)[1] for i in range(images)]


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    generate(tmp_path / "a", seed=3, domain="source", images=5, size=96, classes=CLASSES)
    generate(tmp_path / "b", seed=3, domain="source", images=5, size=96, classes=CLASSES)
    generate(tmp_path / "c", seed=4, domain="source", images=5, size=96, classes=CLASSES)
    for name in ("images/source_00004.jpg", "labels/source_00004.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/images/source_00004.jpg").read_bytes() != (tmp_path / "c/images/source_00004.jpg").read_bytes()


def test_fixed_split_form_writes_split_folders_and_a_pool_without_labels(tmp_path):
    summary = generate(tmp_path / "raw", seed=0, domain="target", images=SPLITS, size=64, classes=CLASSES)
    raw = tmp_path / "raw"
    assert summary["splits"] == {"train": 6, "val": 2, "test": 3} and summary["pool"] == 4 and summary["images"] == 11
    for split in ("train", "val", "test"):
        images = sorted(p.stem for p in (raw / "images" / split).iterdir())
        assert images == sorted(p.stem for p in (raw / "labels" / split).iterdir())
        assert len(images) == SPLITS[split]
    pool = sorted(p.name for p in (raw / "pool").iterdir())
    assert pool == [f"target_pool_{i:05d}.jpg" for i in range(4)]
    assert sorted(p.name for p in (raw / "labels").iterdir()) == ["test", "train", "val"]
    assert not [p for p in raw.rglob("*pool*.txt")], "the pool's labels are never written"
    assert sorted(p.name for p in raw.iterdir()) == ["data.yaml", "images", "labels", "pool"]


def test_pool_labels_can_be_rendered_again_and_splits_never_share_an_image(tmp_path):
    generate(tmp_path, seed=0, domain="target", images=SPLITS, size=64, classes=CLASSES)
    for i in range(SPLITS["pool"]):
        image, boxes = render(0, "target", index_of("pool", i), 64, CLASSES)
        assert render(0, "target", index_of("pool", i), 64, CLASSES)[1] == boxes  # the oracle's labels, every time
        again = io.BytesIO()
        image.save(again, format="JPEG", quality=95)
        assert again.getvalue() == (tmp_path / "pool" / f"target_pool_{i:05d}.jpg").read_bytes()
    files = [p.read_bytes() for p in sorted(tmp_path.rglob("*.jpg"))]
    assert len(set(files)) == len(files) == sum(SPLITS.values())
    from stagetrain.config.datasets import MAX_SYNTHETIC_IMAGES

    starts = sorted(index_of(split, 0) for split in SPLITS)
    assert all(a + MAX_SYNTHETIC_IMAGES <= b for a, b in itertools.pairwise(starts)), "index ranges of splits never overlap"


def test_boxes_are_valid_and_cover_every_class():
    seen = set()
    for boxes in labels(0, "target", 60):
        for cls, xc, yc, w, h in boxes:
            seen.add(cls)
            assert 0 < w <= 1 and 0 < h <= 1
            assert -1e-6 <= xc - w / 2 and xc + w / 2 <= 1 + 1e-6
            assert -1e-6 <= yc - h / 2 and yc + h / 2 <= 1 + 1e-6
    assert seen == set(range(len(CLASSES)))


def test_perspective_near_cones_are_larger_far_ones_a_few_pixels():
    boxes = [b for image in labels(0, "source", 80) for b in image]
    heights = np.array([h for *_, h in boxes]) * 128
    bottoms = np.array([yc + h / 2 for _, _, yc, _, h in boxes])
    assert np.corrcoef(heights, bottoms)[0, 1] > 0.6  # the lower a cone stands in the image, the nearer and taller
    assert heights.min() <= 0.1 * 128 and heights.max() >= 0.25 * 128  # ~13 px at imgsz 160; a quarter of the image


def test_every_box_covers_visible_cone_colour():
    image, boxes = render(1, "source", 0, 160, CLASSES)
    pixels = np.asarray(image, dtype=np.float32)
    for _cls, xc, yc, w, h in (b for b in boxes if b[4] * 160 >= 10):  # fog and blur wash out the paint of the farthest cones
        x0, x1 = int((xc - w / 2) * 160), int(np.ceil((xc + w / 2) * 160))
        y0, y1 = int((yc - h / 2) * 160), int(np.ceil((yc + h / 2) * 160))
        inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
        assert (inside.max(1) - inside.min(1)).max() > 80  # saturated cone paint (grass and asphalt are not)


def test_occlusion_and_truncation_occur():
    overlapping, at_border = 0, 0
    for boxes in labels(0, "source", 100):
        for j, (_, x1, y1, w1, h1) in enumerate(boxes):
            at_border += x1 - w1 / 2 < 1e-6 or x1 + w1 / 2 > 1 - 1e-6 or y1 + h1 / 2 > 1 - 1e-6
            overlapping += sum(abs(x1 - x2) < (w1 + w2) / 2 and abs(y1 - y2) < (h1 + h2) / 2 for _, x2, y2, w2, h2 in boxes[j + 1 :])
    assert overlapping >= 10, "cones behind cones: boxes of the visible parts overlap"
    assert at_border >= 5, "cones cut by the image border"


def test_a_stricter_visibility_rule_leaves_out_more_cones():
    lenient, strict = (sum(map(len, labels(0, "source", 40, world=World(min_visible=v)))) for v in (0.1, 0.9))
    assert strict < lenient


def test_distractors_add_unlabelled_cone_coloured_pixels():
    def outside_boxes(world: World) -> int:
        count = 0
        for i in range(30):
            image, boxes = render(0, "source", i, 128, CLASSES, world)
            a = np.asarray(image, dtype=np.int32)
            warm = (a[..., 0] - a[..., 2] > 90) & (a[..., 0] > 120)  # orange, yellow, red paint
            for _, xc, yc, w, h in boxes:
                warm[
                    int((yc - h / 2) * 128) : int(np.ceil((yc + h / 2) * 128)), int((xc - w / 2) * 128) : int(np.ceil((xc + w / 2) * 128))
                ] = False
            count += int(warm.sum())
        return count

    assert outside_boxes(World(distractors=8)) > 5 * max(outside_boxes(World(distractors=0)), 20)


def test_the_two_domains_differ_in_light_and_colour():
    def stats(domain):
        arr = np.stack([np.asarray(render(0, domain, i, 128, CLASSES)[0], dtype=np.float32) for i in range(20)])
        return arr.mean(), (arr.max(3) - arr.min(3)).mean()

    (source_light, source_colour), (target_light, target_colour) = stats("source"), stats("target")
    assert target_light < 0.6 * source_light
    assert target_colour < 0.5 * source_colour


def test_params_validation_knows_every_synthetic_domain_and_knob():
    from dataclasses import fields

    from stagetrain.config.schema import SYNTHETIC_DOMAINS, SYNTHETIC_KNOBS
    from stagetrain.data.synthetic import DOMAINS

    assert set(SYNTHETIC_DOMAINS) == set(DOMAINS), "keep config/schema.py SYNTHETIC_DOMAINS in step with data/scene.py DOMAINS"
    assert set(SYNTHETIC_KNOBS) == {f.name for f in fields(World)}, "keep config/schema.py SYNTHETIC_KNOBS in step with World"


def test_download_writes_the_fixed_split_and_organize_keeps_it(tmp_path, params):
    from stagetrain.config import parse
    from stagetrain.data import organize, sources

    params["datasets"]["target"]["synthetic"] = {"train": 8, "val": 3, "test": 4, "pool": 2, "size": 64, "domain": "target"}
    cfg = parse(params)
    summary = sources.run(cfg, "target", tmp_path / "raw")
    assert summary["splits"] == {"train": 8, "val": 3, "test": 4} and summary["pool"] == 2
    report = organize.run(cfg, "target", tmp_path / "raw", tmp_path / "out", workers=1)
    assert report["images"] == {"train": 8, "val": 3, "test": 4}
    for split in ("train", "val", "test"):
        organized = sorted(p.name for p in (tmp_path / "out/images" / split).iterdir())
        assert organized == sorted(p.name for p in (tmp_path / "raw/images" / split).iterdir())
