"""Near-duplicates: the perceptual hash and its threshold, the pair search, and organize's rule (no near copy
straddles train and val/test, within a dataset or across datasets), each case listed in the report."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageEnhance

from stagetrain.config import parse
from stagetrain.data import leakage, near_dup, organize, splits, synthetic, validate

CLASSES = tuple(synthetic.CONE_STYLES)


def hash_of(path):
    return validate.check_image(path, phash=True).phash


def save_jpeg(image, path, size=None, quality=75):
    (image.resize(size, Image.Resampling.LANCZOS) if size else image).save(path, quality=quality)
    return path


def make_raw(root, n, domain="target", size=256, split_of=None):
    """A YOLO dataset of ``n`` synthetic renders (images/<split>/ when ``split_of(i)`` names a split); rel stems -> boxes."""
    for i in range(n):
        image, boxes = synthetic.render(0, domain, i, size, CLASSES)
        folder = split_of(i) if split_of else ""
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "labels" / folder).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / folder / f"{domain}_{i:03d}.jpg", quality=92)
        (root / "labels" / folder / f"{domain}_{i:03d}.txt").write_text(
            "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in boxes)
        )
    (root / "data.yaml").write_text(yaml.safe_dump({"names": list(CLASSES)}))
    return root


def resized_copy(src_image, src_label, image, label, side=160):
    """A resized, re-encoded copy of an image under another name, with the same (normalised) label."""
    save_jpeg(Image.open(src_image), image, (side, side), quality=75)
    shutil.copyfile(src_label, label)


def where_is(out, name):
    return next(split for split in ("train", "val", "test") if (out / "images" / split / name).exists())


def test_copies_are_within_the_threshold_and_other_pictures_far_beyond(tmp_path, params):
    limit = parse(params).organize.near_duplicates
    assert limit > 0  # the repo's default looks for near-duplicates
    image = synthetic.render(0, "target", 7, 256, CLASSES)[0]
    original = hash_of(save_jpeg(image, tmp_path / "original.jpg", quality=92))
    copies = {
        "resized to 150 px, JPEG 70": save_jpeg(image, tmp_path / "small.jpg", (150, 150), quality=70),
        "upscaled to 400 px, PNG": image.resize((400, 400), Image.Resampling.BICUBIC).save(tmp_path / "big.png") or tmp_path / "big.png",
        "10% brighter, JPEG 85": save_jpeg(ImageEnhance.Brightness(image).enhance(1.1), tmp_path / "bright.jpg", quality=85),
        "squashed to 200x256": save_jpeg(image, tmp_path / "squashed.jpg", (200, 256), quality=90),
    }
    other = {
        "the next render of the same world": save_jpeg(synthetic.render(0, "target", 8, 256, CLASSES)[0], tmp_path / "next.jpg"),
        "shifted by a quarter": save_jpeg(image.crop((64, 0, 256, 256)), tmp_path / "shifted.jpg", (256, 256)),
        "mirrored": save_jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tmp_path / "mirrored.jpg"),
    }
    caught = {name: near_dup.distance(original, hash_of(path)) for name, path in copies.items()}
    apart = {name: near_dup.distance(original, hash_of(path)) for name, path in other.items()}
    assert max(caught.values()) <= limit, caught
    assert min(apart.values()) > 2 * limit, apart


def test_different_renders_of_one_domain_are_not_near_duplicates(tmp_path, params):
    """Synthetic images of one domain share a look; none may count as a copy of another."""
    limit = parse(params).organize.near_duplicates
    hashes = [hash_of(save_jpeg(synthetic.render(0, "source", i, 128, CLASSES)[0], tmp_path / f"{i}.jpg", quality=92)) for i in range(40)]
    closest = min(near_dup.distance(a, b) for a, b in itertools.combinations(hashes, 2))
    assert closest > limit, closest


def test_exif_rotated_original_and_its_upright_copy_hash_alike(tmp_path, params):
    limit = parse(params).organize.near_duplicates
    image = synthetic.render(0, "source", 3, 256, CLASSES)[0].crop((0, 0, 256, 192))
    exif = Image.Exif()
    exif[validate.EXIF_ORIENTATION] = 6  # stored as is, shown turned 90 degrees clockwise
    image.save(tmp_path / "tagged.png", exif=exif)
    image.save(tmp_path / "untagged.png")
    image.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")  # the same picture, saved as shown
    upright = hash_of(tmp_path / "upright.png")
    assert near_dup.distance(hash_of(tmp_path / "tagged.png"), upright) <= 2
    assert near_dup.distance(hash_of(tmp_path / "untagged.png"), upright) > 2 * limit


def test_pair_search_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=(600, near_dup.WORDS), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(300, near_dup.WORDS), dtype=np.uint64)
    for i in range(0, 600, 7):  # plant near copies: a few bits flipped, some across the words
        flips = rng.choice(near_dup.BITS, size=int(rng.integers(0, 30)), replace=False)
        target = a if i % 2 else b
        j = (i * 13) % len(target)
        target[j] = a[i]
        for bit in flips:
            target[j, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)

    def brute(x, y, limit):  # every distance at once, no lower bound, no chunks
        d = np.bitwise_count(x[:, None, :] ^ y[None, :, :]).sum(axis=2)
        i, j = np.nonzero((d <= limit) & (np.arange(len(x))[:, None] < np.arange(len(y))[None, :] if y is x else True))
        return list(zip(i.tolist(), j.tolist(), d[i, j].tolist(), strict=True))

    for limit in (5, 20):
        assert near_dup.pairs(a, None, limit) == brute(a, a, limit)
        assert near_dup.pairs(a, b, limit) == brute(a, b, limit)
    assert near_dup.pairs(a, None, 20)  # the planted pairs are there


def test_seeded_split_keeps_each_near_duplicate_with_its_original(tmp_path, params):
    raw = make_raw(tmp_path / "raw", 30)
    for i in range(6):
        resized_copy(
            raw / f"images/target_{i:03d}.jpg",
            raw / f"labels/target_{i:03d}.txt",
            raw / f"images/zz_copy_{i}.jpg",
            raw / f"labels/zz_copy_{i}.txt",
        )
    out = tmp_path / "out"
    report = organize.run(parse(params), "target", raw, out)
    assert sum(report["images"].values()) == 36  # nothing dropped: a seeded split moves each pair whole
    for i in range(6):
        assert where_is(out, f"target_{i:03d}.jpg") == where_is(out, f"zz_copy_{i}.jpg")
    grouped = {entry["file"]: entry for entry in report["near_duplicates_grouped"]}
    assert set(grouped) == {str(raw / f"images/zz_copy_{i}.jpg") for i in range(6)}
    for i in range(6):
        entry = grouped[str(raw / f"images/zz_copy_{i}.jpg")]
        assert entry["duplicate_of"] == str(raw / f"images/target_{i:03d}.jpg")
        assert 0 < entry["distance"] <= params["organize"]["near_duplicates"]
        assert entry["split"] == where_is(out, f"zz_copy_{i}.jpg")
    assert report["near_duplicates"] | {"pairs": 6, "groups": 6, "grouped": 6} == report["near_duplicates"]
    params["organize"]["near_duplicates"] = 0  # off: exact dedupe only, nothing grouped
    assert organize.run(parse(params), "target", raw, tmp_path / "off")["near_duplicates_grouped"] == []


def test_source_split_drops_a_test_image_whose_near_copy_trains(tmp_path, params):
    raw = make_raw(tmp_path / "raw", 12, split_of=lambda i: "train" if i < 6 else "val" if i < 9 else "test")
    resized_copy(
        raw / "images/test/target_010.jpg", raw / "labels/test/target_010.txt", raw / "images/train/copy.jpg", raw / "labels/train/copy.txt"
    )
    report = organize.run(parse(params), "target", raw, tmp_path / "out")
    assert report["images"] == {"train": 7, "val": 3, "test": 2}
    (entry,) = report["duplicates_removed"]
    assert entry["file"] == str(raw / "images/test/target_010.jpg") and entry["split"] == "test"
    assert entry["duplicate_of"] == str(raw / "images/train/copy.jpg")
    assert 0 < entry["distance"] <= params["organize"]["near_duplicates"]
    assert entry["reason"] == "near-duplicate of an image kept in this dataset (train)"
    assert report["near_duplicates"]["removed"] == 1


def test_near_copy_in_another_dataset_is_kept_out_of_val_and_test(tmp_path, params):
    cfg = parse(params)
    target = make_raw(tmp_path / "raw/target", 20, "target")
    source = make_raw(tmp_path / "raw/source", 20, "source")
    for i in range(5):  # the same photos published in the other dataset, smaller and re-encoded
        resized_copy(
            target / f"images/target_{i:03d}.jpg",
            target / f"labels/target_{i:03d}.txt",
            source / f"images/zz_{i}.jpg",
            source / f"labels/zz_{i}.txt",
        )
    report = organize.run(cfg, "target", target, tmp_path / "out/target", [source])
    kept = {entry["file"]: entry for entry in report["kept_in_train"]}
    assert set(kept) == {str(target / f"images/target_{i:03d}.jpg") for i in range(5)}
    assert all(
        0 < e["distance"] <= cfg.organize.near_duplicates and e["reason"] == "near-duplicate of an image in another dataset"
        for e in kept.values()
    )
    assert all(where_is(tmp_path / "out/target", f"target_{i:03d}.jpg") == "train" for i in range(5))
    assert report["near_duplicates"]["kept_in_train"] == 5
    report = organize.run(cfg, "source", source, tmp_path / "out/source", [target])
    assert {e["duplicate_of"] for e in report["kept_in_train"]} == {str(target / f"images/target_{i:03d}.jpg") for i in range(5)}
    # with a split of its own, the other dataset's near copies leave val/test instead
    split = make_raw(tmp_path / "raw/split", 12, "source", split_of=lambda i: "train" if i < 6 else "val" if i < 9 else "test")
    for i in (0, 1):
        resized_copy(
            target / f"images/target_{i:03d}.jpg",
            target / f"labels/target_{i:03d}.txt",
            split / f"images/test/zz_{i}.jpg",
            split / f"labels/test/zz_{i}.txt",
        )
    report = organize.run(cfg, "source", split, tmp_path / "out/split", [target])
    assert report["images"] == {"train": 6, "val": 3, "test": 3}
    assert sorted(e["file"] for e in report["duplicates_removed"]) == [str(split / f"images/test/zz_{i}.jpg") for i in (0, 1)]


def _flipped(hashes: bytes, bits: range) -> bytes:
    flipped = bytearray(hashes)
    for bit in bits:
        flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def test_a_chain_of_near_duplicates_moves_as_one_group():
    """A ~ B and B ~ C but A and C 40 bits apart: one group, placed whole or kept in its best split."""
    rng = np.random.default_rng(1)
    base = [rng.bytes(near_dup.BITS // 8) for _ in range(30)]
    a = base[0]
    b, c = _flipped(a, range(20)), _flipped(a, range(40))  # B 20 bits from A and from C; C 40 from A
    chain = [splits.Sample(Path(f"/raw/{n}.jpg"), f"{n}.jpg", None, n, [], h) for n, h in (("a", a), ("b", b), ("c", c))]
    rest = [splits.Sample(Path(f"/raw/x{i:02d}.jpg"), f"x{i:02d}.jpg", None, f"x{i}", [], h) for i, h in enumerate(base[1:])]
    links, pairs = leakage.link(chain + rest, leakage.Others(), 24)
    assert pairs == 2 and [[s.rel for s in g] for g in links.groups] == [["a.jpg", "b.jpg", "c.jpg"]]
    members, _, notes = splits.assign_splits(chain + rest, {"train": 0.5, "val": 0.25, "test": 0.25}, 0, links)
    assert len({split for split, group in members.items() for s in group if s in chain}) == 1
    assert [(n["file"], n["duplicate_of"], n["distance"]) for n in notes["grouped"]] == [
        ("/raw/b.jpg", "/raw/a.jpg", 20),
        ("/raw/c.jpg", "/raw/b.jpg", 20),
    ]
    for sample, split in zip(chain + rest, ["train", "val", "test"] + ["train"] * 15 + ["val"] * 7 + ["test"] * 7, strict=True):
        sample.split = split  # now a source with its own split
    members, _, notes = splits.assign_splits(chain + rest, {"train": 0.5, "val": 0.25, "test": 0.25}, 0, links)
    assert [s.rel for s in members["train"] if s in chain] == ["a.jpg"] and not {"b.jpg", "c.jpg"} & {
        s.rel for g in members.values() for s in g
    }
    assert [(n["file"], n["duplicate_of"], n["distance"]) for n in notes["removed"]] == [
        ("/raw/b.jpg", "/raw/a.jpg", 20),
        ("/raw/c.jpg", "/raw/a.jpg", 40),
    ]
