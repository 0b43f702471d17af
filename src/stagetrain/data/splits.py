"""Which split each usable image goes to, and which identical images are kept once.

* dedupe: identical images (sha256) are kept once, a train copy winning over val/test; an image that
  another dataset's raw folder also holds is never put in (or is removed from) val/test, so no
  dataset is tested on what another trains on;
* split: the source's own where it has one (a missing val/test is carved out of its train);
  otherwise seeded and stratified (by each image's rarest class) with scikit-learn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from stagetrain.config import SPLITS

SPLIT_RANK = {"train": 0, "val": 1, "test": 2, None: 3}  # which copy of a duplicate is kept


@dataclass
class Sample:
    """One usable image: its canonical boxes ``(class_id, xc, yc, w, h)`` and where it came from."""

    image: Path
    rel: str  # path inside the raw folder: sort key and output name
    split: str | None  # the source's own split
    digest: str
    boxes: list[tuple[int, float, float, float, float]]


def dedupe_images(samples: list[Sample]) -> tuple[list[Sample], list[dict]]:
    """Keep one sample per image content (train first, then by path); the others as report entries."""
    first: dict[str, Sample] = {}
    removed = []
    for sample in sorted(samples, key=lambda s: (SPLIT_RANK[s.split], s.rel)):
        kept = first.setdefault(sample.digest, sample)
        if kept is not sample:
            reason = "identical to an image kept in this dataset" + (f" ({kept.split})" if kept.split else "")
            removed.append({"file": str(sample.image), "split": sample.split, "duplicate_of": str(kept.image), "reason": reason})
    keep = {id(s) for s in first.values()}
    return [s for s in samples if id(s) in keep], removed


def _strata(samples: list[Sample]) -> list[int]:
    """Stratum per image: its rarest class (spreads rare classes over the splits); -1 background, -2 pooled rare."""
    frequency = Counter(c for s in samples for c in {b[0] for b in s.boxes})
    strata = [min({b[0] for b in s.boxes}, key=lambda c: (frequency[c], c)) if s.boxes else -1 for s in samples]
    counts = Counter(strata)
    return [k if counts[k] >= 3 else -2 for k in strata]


def _hold_out(samples: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of ``n`` samples off ``samples``, stratified when every stratum can give one to each side."""
    samples = sorted(samples, key=lambda s: s.rel)
    n = min(n, len(samples) - 1)
    if n <= 0:
        return samples, []
    strata = _strata(samples)
    counts = Counter(strata)
    stratify = strata if min(counts.values()) >= 2 and len(counts) <= min(n, len(samples) - n) else None
    rest, held = train_test_split(samples, test_size=n, random_state=seed, stratify=stratify)
    return rest, held


def _share_note(sample: Sample, shared: dict[str, str]) -> dict:
    return {
        "file": str(sample.image),
        "split": sample.split,
        "duplicate_of": shared[sample.digest],
        "reason": "identical image in another dataset",
    }


def assign_splits(
    samples: list[Sample], fractions: dict[str, float], seed: int, shared: dict[str, str]
) -> tuple[dict[str, list[Sample]], dict[str, str], dict[str, list]]:
    """Split samples, keeping images that another dataset holds (``shared``: digest -> its file) out of val/test.

    Returns:
        The splits, where each split came from (``source``, ``seeded``, ``carved from train``), and notes:
        ``removed`` (shared images dropped from the source's val/test), ``kept_in_train`` (shared images a
        seeded split kept in train) and ``outside_source_split`` (images in no split folder of a split source).
    """
    notes: dict[str, list] = {"removed": [], "kept_in_train": [], "outside_source_split": []}
    sizes = {split: max(1, round(len(samples) * fractions[split])) for split in ("test", "val")}
    if not any(s.split for s in samples):
        pinned = [s for s in samples if s.digest in shared]
        notes["kept_in_train"] = [_share_note(s, shared) for s in pinned]
        rest, test = _hold_out([s for s in samples if s.digest not in shared], sizes["test"], seed)
        train, val = _hold_out(rest, sizes["val"], seed)
        return {"train": train + pinned, "val": val, "test": test}, dict.fromkeys(SPLITS, "seeded"), notes
    notes["outside_source_split"] = [str(s.image) for s in samples if s.split is None]
    splits = {split: [s for s in samples if s.split == split] for split in SPLITS}
    origin = dict.fromkeys(SPLITS, "source")
    for split in ("test", "val"):
        if not splits[split] and splits["train"]:  # e.g. a Roboflow export with train and valid only
            pinned = [s for s in splits["train"] if s.digest in shared]
            rest, splits[split] = _hold_out([s for s in splits["train"] if s.digest not in shared], sizes[split], seed)
            splits["train"], origin[split] = rest + pinned, "carved from train"
    for split in ("val", "test"):
        notes["removed"] += [_share_note(s, shared) for s in splits[split] if s.digest in shared]
        splits[split] = [s for s in splits[split] if s.digest not in shared]
    return splits, origin, notes
