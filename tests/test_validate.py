"""validate: every bad-input kind in error and skip mode, and the inputs that must pass (real files, no mocks)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from stagetrain.config import parse
from stagetrain.data import organize, sources, validate
from stagetrain.errors import UserError

N = 12  # images in the raw folder each test starts from


@pytest.fixture
def raw(tmp_path, params):
    params["datasets"]["target"]["synthetic"]["images"] = N
    sources.run(parse(params), "target", tmp_path / "raw")
    return tmp_path / "raw"


def image(raw, i, suffix=".jpg"):
    return raw / "images" / f"target_{i:05d}{suffix}"


def label(raw, i):
    return raw / "labels" / f"target_{i:05d}.txt"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def organized(out):
    return {p.name for split in ("train", "val", "test") for p in (out / "images" / split).iterdir()}


def out_label(out, stem):
    return next(out.glob(f"labels/*/{stem}.txt")).read_text()


# kind: (break the raw folder, the message expected (file[:line]: reason), the image left out in skip mode)
BAD = {
    "zero-byte image": (lambda raw: image(raw, 1).write_bytes(b""), "target_00001.jpg: empty file (0 bytes)", 1),
    "truncated JPEG": (lambda raw: truncate(image(raw, 2)), "target_00002.jpg: cannot be decoded, truncated or corrupt", 2),
    "non-image .jpg": (lambda raw: image(raw, 3).write_text("<html>404</html>"), "target_00003.jpg: not an image", 3),
    "bytes after the JPEG": (
        lambda raw: image(raw, 4).write_bytes(image(raw, 4).read_bytes() + b"\0" * 8),
        "target_00004.jpg: JPEG does not end with its end-of-image marker",
        4,
    ),
    "4-number line": (lambda raw: label(raw, 5).write_text("0 0.5 0.5 0.1\n"), "target_00005.txt:1: expected 5 numbers", 5),
    "class id out of range": (
        lambda raw: label(raw, 6).write_text("0 0.5 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\n"),
        "target_00006.txt:2: class id 9 is not one of 0..4",
        6,
    ),
    "NaN": (
        lambda raw: label(raw, 7).write_text("0 nan 0.5 0.1 0.1\n"),
        "target_00007.txt:1: '0 nan 0.5 0.1 0.1' holds a value that is not a finite number",
        7,
    ),
    "box outside": (
        lambda raw: label(raw, 8).write_text("0 0.95 0.5 0.2 0.2\n"),
        "target_00008.txt:1: box (xc yc w h, normalised) 0.95 0.5 0.2 0.2 lies outside the image",
        8,
    ),
    "zero-size box": (
        lambda raw: label(raw, 9).write_text("0 0.5 0.5 0 0.1\n"),
        "target_00009.txt:1: box (xc yc w h, normalised) 0.5 0.5 0 0.1 has zero size",
        9,
    ),
    "not numbers": (lambda raw: label(raw, 10).write_text("blue 0.5 0.5 0.1 0.1\n"), "target_00010.txt:1: not numbers", 10),
    "orphan label": (
        lambda raw: (raw / "labels/ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n"),
        "ghost.txt: label file without an image",
        None,
    ),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_errors_by_default_and_is_skipped_and_listed_in_skip_mode(tmp_path, params, raw, kind):
    breaks, message, left_out = BAD[kind]
    breaks(raw)
    with pytest.raises(UserError) as err:
        organize.run(parse(params), "target", raw, tmp_path / "out")
    assert message in str(err.value) and "organize.on_bad: skip" in str(err.value)
    assert not (tmp_path / "out").exists()

    params["organize"]["on_bad"] = "skip"
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert any(message in line for line in report["skipped"])
    kept = organized(tmp_path / "out")
    assert len(kept) == N - (left_out is not None)
    if left_out is not None:
        assert f"target_{left_out:05d}.jpg" not in kept


def test_every_problem_is_listed_in_one_error(tmp_path, params, raw):
    for breaks, _, _ in BAD.values():
        breaks(raw)
    with pytest.raises(UserError) as err:
        organize.run(parse(params), "target", raw, tmp_path / "out")
    for _, message, _ in BAD.values():
        assert message in str(err.value)


def test_error_lists_the_first_50_problems_then_a_count(tmp_path, params, raw):
    label(raw, 0).write_text("".join(f"{9 + i} 0.5 0.5 0.1 0.1\n" for i in range(60)))
    with pytest.raises(UserError) as err:
        organize.run(parse(params), "target", raw, tmp_path / "out")
    lines = str(err.value).splitlines()
    assert sum("class id" in line for line in lines) == 50 and lines[-1].strip() == "... and 10 more"


def test_accepted_label_forms(tmp_path, params, raw):
    label(raw, 1).write_bytes(b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\r\n1 0.3 0.3 0.1 0.1\r\n")  # BOM + CRLF (Windows tools)
    label(raw, 2).write_text("2 0.1 0.2 0.3 0.2 0.3 0.4 0.1 0.4\n")  # polygon (segmentation export) -> its box
    label(raw, 3).write_text("0 0.995 0.5 0.02 0.1\n")  # overhangs by 0.005 = 0.48 px: rounding, clamped without a word
    label(raw, 4).write_text("\n")  # empty: a background image
    label(raw, 5).unlink()  # missing: a background image
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    out = tmp_path / "out"
    assert out_label(out, "target_00001") == "0 0.500000 0.500000 0.200000 0.200000\n1 0.300000 0.300000 0.100000 0.100000\n"
    assert out_label(out, "target_00002") == "2 0.200000 0.300000 0.200000 0.200000\n"
    assert out_label(out, "target_00003") == "0 0.992500 0.500000 0.015000 0.100000\n"
    assert out_label(out, "target_00004") == out_label(out, "target_00005") == ""
    assert report["polygons_converted"] == 1 and report["boxes_clipped"] == 0 and report["clipped_boxes"] == []
    assert sum(report["background_images"].values()) >= 2 and report["skipped"] == []


@pytest.mark.parametrize(
    ("over", "clamped", "clipped"),
    [
        (5e-7, False, False),  # 6-decimal text rounding: left as written, so labels round-trip
        (0.8 / 200, True, False),  # 0.8 px: rounding, clamped to the border without a word
        (1.5 / 200, True, True),  # 1.5 px (< 1 % of 200 px): clipped, counted and listed
    ],
)
def test_yolo_box_overhang_is_rounding_up_to_one_pixel_then_clipped(over, clamped, clipped):
    box = validate.Box("blue_cone", 0.9 + over, 0.5, 0.2, 0.2, "x.txt:1")  # spans 0.8 + over .. 1 + over
    [(_, xc, yc, w, h, where)], problems, clips = validate.place_boxes([box], (200, 200), pixels=False)
    assert (xc, w) == (pytest.approx(0.9 + over / 2), pytest.approx(0.2 - over)) if clamped else (xc, w) == (0.9 + over, 0.2)
    assert (yc, h, where, problems) == (0.5, pytest.approx(0.2), "x.txt:1", [])
    assert [c["where"] for c in clips] == (["x.txt:1"] if clipped else [])
    beyond = validate.Box("blue_cone", 0.95, 0.5, 0.2, 0.2, "x.txt:2")  # 0.05 over: more than TOLERANCE, a problem
    message = "x.txt:2: box (xc yc w h, normalised) 0.95 0.5 0.2 0.2 lies outside the image (by more than 0.01 of its size)"
    assert validate.place_boxes([beyond], (200, 200), pixels=False)[:2] == ([], [message])


def test_grayscale_png_and_upper_case_jpg_are_accepted(tmp_path, params, raw):
    Image.open(image(raw, 1)).convert("L").save(image(raw, 1, ".png"))
    image(raw, 1).unlink()
    image(raw, 2).rename(image(raw, 2, ".JPG"))
    organize.run(parse(params), "target", raw, tmp_path / "out")
    kept = organized(tmp_path / "out")
    assert {"target_00001.png", "target_00002.JPG"} <= kept and len(kept) == N
    assert out_label(tmp_path / "out", "target_00002") == label(raw, 2).read_text()


def exif_rotated(path, width, height, orientation=6):
    exif = Image.Exif()
    exif[validate.EXIF_ORIENTATION] = orientation
    Image.new("RGB", (width, height), (200, 120, 40)).save(path, exif=exif)


def test_exif_orientation_gives_the_displayed_size(tmp_path):
    exif_rotated(tmp_path / "rot.jpg", 80, 40)  # stored 80x40, shown 40x80 (rotated 90 degrees)
    check = validate.check_image(tmp_path / "rot.jpg")
    assert (check.width, check.height, check.problem) == (40, 80, None)
    assert validate.check_image(tmp_path / "rot.jpg").digest == validate.file_digest(tmp_path / "rot.jpg")


def test_coco_boxes_are_normalised_by_the_displayed_size(tmp_path, params):
    raw = tmp_path / "raw"
    raw.mkdir()
    entries = []
    for i in range(4):
        exif_rotated(raw / f"r{i}.jpg", 80 + i, 40)  # distinct content, each displayed (40, 80 + i)
        entries.append({"id": i, "file_name": f"r{i}.jpg", "width": 40, "height": 80 + i})
    annotations = [{"id": i, "image_id": i, "category_id": 0, "bbox": [10, 20, 10, 40]} for i in range(4)]
    coco = {"images": entries, "annotations": annotations, "categories": [{"id": 0, "name": "blue_cone"}]}
    (raw / "_annotations.coco.json").write_text(json.dumps(coco))
    params["organize"]["near_duplicates"] = 0  # four flat orange images: near-duplicates, which a split keeps together
    organize.run(parse(params), "target", raw, tmp_path / "out")
    assert out_label(tmp_path / "out", "r0") == "0 0.375000 0.500000 0.250000 0.500000\n"  # 15/40, 40/80, 10/40, 40/80

    entries[1].update(width=81, height=40)  # annotated on the stored (unrotated) frame: boxes would miss
    (raw / "_annotations.coco.json").write_text(json.dumps(coco))
    with pytest.raises(UserError, match=r"r1.jpg: its annotation is for a 81x40 image but it displays as 40x81"):
        organize.run(parse(params), "target", raw, tmp_path / "out")


def test_decode_check_catches_truncation_that_verify_misses(tmp_path):
    big = Image.effect_noise((640, 480), 40).convert("RGB")
    big.save(tmp_path / "big.jpg", quality=90)
    Image.open(tmp_path / "big.jpg").convert("L").save(tmp_path / "big.png")
    for name in ("big.jpg", "big.png"):
        truncate(tmp_path / name)
        for phash in (False, True):  # the hash's decode (grey, another DCT scale) reads every byte too
            assert "truncated or corrupt" in validate.check_image(tmp_path / name, phash=phash).problem
    Image.open(tmp_path / "big.jpg").verify()  # Pillow's verify() passes the truncated JPEG: it reads headers only


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: Image.new("RGB", (8, 40)).save(p, "JPEG"), "is 8x40 px; Ultralytics drops images under 10 px"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "GIF"), "is a GIF file"),
    ],
)
def test_images_ultralytics_would_drop_are_bad(tmp_path, make, problem):
    make(tmp_path / "x.jpg")
    assert problem in validate.check_image(tmp_path / "x.jpg").problem
