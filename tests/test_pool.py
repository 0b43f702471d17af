"""The unlabelled pool: a raw dataset's top-level pool/ reaches data/organized/<ds>/images/pool/, validated, without
copies (identical or near) of any labelled image of any dataset or of an earlier pool image, every drop listed."""

from __future__ import annotations

import shutil

import pytest
import yaml
from PIL import Image

from stagetrain.config import parse
from stagetrain.data import organize, sources, synthetic
from stagetrain.errors import UserError
from test_near_dup import CLASSES, make_raw, save_jpeg

SPLIT_OF = {**dict.fromkeys(range(6), "train"), **dict.fromkeys(range(6, 9), "val"), **dict.fromkeys(range(9, 12), "test")}


def render(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_jpeg(synthetic.render(0, "target", 100 + index, 256, CLASSES)[0], path, quality=92)


def small_copy(src, dst):
    return save_jpeg(Image.open(src), dst, (160, 160), quality=75)


@pytest.fixture
def world(tmp_path, params):
    """A local folder dataset (own split, a pool of 10 images) downloaded into raw/target, and another dataset in raw/source."""
    local = make_raw(tmp_path / "local", 12, split_of=SPLIT_OF.get)
    other = make_raw(tmp_path / "raw/source", 6, "source")
    pool = local / "pool"
    for i in range(4):
        render(pool / f"p_new_{i}.jpg", i)
    render(pool / "sub/p_nested.jpg", 4)
    shutil.copyfile(pool / "p_new_0.jpg", pool / "p_new_0_again.jpg")
    small_copy(pool / "p_new_1.jpg", pool / "p_new_1_small.jpg")
    shutil.copyfile(local / "images/test/target_010.jpg", pool / "p_test_copy.jpg")
    small_copy(local / "images/train/target_000.jpg", pool / "p_train_small.jpg")
    small_copy(other / "images/source_002.jpg", pool / "p_other_small.jpg")
    (pool / "notes.txt").write_text("frames from the 2024 endurance run, unlabelled\n")
    (other / "pool").mkdir()  # the other dataset's pool holds a copy of our test image: that is for its organize to drop
    shutil.copyfile(local / "images/test/target_011.jpg", other / "pool/theirs.jpg")
    params["datasets"]["target"] = {"kind": "local", "local": {"path": str(local)}, "class_map": {}}
    sources.run(parse(params), "target", tmp_path / "raw/target")
    return tmp_path / "raw/target", other


def test_pool_is_passed_through_without_copies_of_labelled_or_earlier_pool_images(tmp_path, params, world):
    raw, other = world
    report = organize.run(parse(params), "target", raw, tmp_path / "out", [other])
    pool = tmp_path / "out/images/pool"
    assert sorted(p.name for p in pool.iterdir()) == ["p_nested.jpg", "p_new_0.jpg", "p_new_1.jpg", "p_new_2.jpg", "p_new_3.jpg"]
    assert pool.joinpath("p_new_0.jpg").stat().st_ino == (raw / "pool/p_new_0.jpg").stat().st_ino  # hard link, never re-encoded
    assert not (tmp_path / "out/labels/pool").exists()
    assert set(yaml.safe_load((tmp_path / "out/data.yaml").read_text())) == {"train", "val", "test", "names"}
    assert report["images"] == {"train": 6, "val": 3, "test": 3}  # the other dataset's pool does not touch our splits
    removed = {entry["file"].rpartition("/")[2]: entry for entry in report["pool"].pop("removed")}
    assert report["pool"] == {"found": 10, "images": 5, "skipped": 0, "duplicates_removed": 5}
    limit = params["organize"]["near_duplicates"]
    want = {
        "p_new_0_again.jpg": ("p_new_0.jpg", "identical to an earlier pool image"),
        "p_new_1_small.jpg": ("p_new_1.jpg", "near-duplicate of an earlier pool image"),
        "p_test_copy.jpg": ("target_010.jpg", "identical to a labelled image of this dataset (test)"),
        "p_train_small.jpg": ("target_000.jpg", "near-duplicate of a labelled image of this dataset (train)"),
        "p_other_small.jpg": ("source_002.jpg", "near-duplicate of an image in another dataset"),
    }
    assert set(removed) == set(want)
    for name, (partner, reason) in want.items():
        entry = removed[name]
        assert entry["duplicate_of"].endswith("/" + partner) and entry["reason"] == reason
        assert (entry["distance"] == 0) == reason.startswith("identical") and entry["distance"] <= limit


def test_exact_dedupe_only_and_no_dedupe(tmp_path, params, world):
    raw, other = world
    params["organize"]["near_duplicates"] = 0
    report = organize.run(parse(params), "target", raw, tmp_path / "exact", [other])
    assert sorted(e["file"].rpartition("/")[2] for e in report["pool"]["removed"]) == ["p_new_0_again.jpg", "p_test_copy.jpg"]
    params["organize"]["dedupe"] = False
    report = organize.run(parse(params), "target", raw, tmp_path / "none", [other])
    assert report["pool"] | {"removed": []} == {"found": 10, "images": 10, "skipped": 0, "duplicates_removed": 0, "removed": []}


def test_a_corrupt_pool_image_follows_on_bad(tmp_path, params, world):
    raw, other = world
    data = (raw / "pool/p_new_2.jpg").read_bytes()
    (raw / "pool/p_new_2.jpg").unlink()  # a hard link into the local folder: replace it, never write through it
    (raw / "pool/p_new_2.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"pool/p_new_2.jpg: .*truncated"):
        organize.run(parse(params), "target", raw, tmp_path / "out", [other])
    params["organize"]["on_bad"] = "skip"
    report = organize.run(parse(params), "target", raw, tmp_path / "out", [other])
    assert any("pool/p_new_2.jpg" in line for line in report["skipped"])
    assert report["pool"]["skipped"] == 1 and report["pool"]["images"] == 4
    assert not (tmp_path / "out/images/pool/p_new_2.jpg").exists()
