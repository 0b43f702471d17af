"""The embedded synthetic dataset: deterministic, labelled correctly, two distinct domains."""

from __future__ import annotations

import numpy as np

from stagetrain.data.synthetic import generate, render

CLASSES = ("blue_cone", "yellow_cone", "orange_cone", "large_orange_cone", "unknown_cone")


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    generate(tmp_path / "a", seed=3, domain="source", images=5, size=96, classes=CLASSES)
    generate(tmp_path / "b", seed=3, domain="source", images=5, size=96, classes=CLASSES)
    generate(tmp_path / "c", seed=4, domain="source", images=5, size=96, classes=CLASSES)
    for name in ("images/source_00004.jpg", "labels/source_00004.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/images/source_00004.jpg").read_bytes() != (tmp_path / "c/images/source_00004.jpg").read_bytes()


def test_boxes_are_valid_and_cover_every_class():
    seen = set()
    for i in range(60):
        image, boxes = render(0, "target", i, 128, CLASSES)
        assert image.size == (128, 128)
        assert boxes, "every synthetic image holds at least one cone"
        for cls, xc, yc, w, h in boxes:
            seen.add(cls)
            assert 0 < w <= 1 and 0 < h <= 1
            assert -1e-6 <= xc - w / 2 and xc + w / 2 <= 1 + 1e-6
            assert -1e-6 <= yc - h / 2 and yc + h / 2 <= 1 + 1e-6
    assert seen == set(range(len(CLASSES)))


def test_box_encloses_the_drawn_cone():
    image, boxes = render(1, "source", 0, 160, CLASSES)
    pixels = np.asarray(image, dtype=np.float32)
    _cls, xc, yc, w, h = boxes[0]
    x0, x1 = int((xc - w / 2) * 160), int((xc + w / 2) * 160)
    y0, y1 = int((yc - h / 2) * 160), int((yc + h / 2) * 160)
    inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
    ground = pixels[:, :4].reshape(-1, 3).mean(0)  # left edge: ground only (cones start at x >= 10%)
    assert np.abs(inside - ground).sum(1).max() > 100  # the cone's colour differs strongly from the ground


def test_target_domain_is_darker_and_blurrier():
    def stats(domain):
        arr = np.stack([np.asarray(render(0, domain, i, 128, CLASSES)[0], dtype=np.float32).mean(2) for i in range(20)])
        edges = np.abs(np.diff(arr, axis=2)).max(axis=(1, 2))  # strongest horizontal step per image
        return arr.mean(), np.median(edges)

    (source_light, source_edge), (target_light, target_edge) = stats("source"), stats("target")
    assert target_light < 0.75 * source_light
    assert target_edge < 0.75 * source_edge


def test_params_validation_knows_every_synthetic_domain():
    from stagetrain.config.schema import SYNTHETIC_DOMAINS
    from stagetrain.data.synthetic import DOMAINS

    assert set(SYNTHETIC_DOMAINS) == set(DOMAINS), "keep config/schema.py SYNTHETIC_DOMAINS in step with data/synthetic.py DOMAINS"
