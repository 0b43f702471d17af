"""Which split each usable image goes to, so that no image is tested on a copy of itself that trains.

* identical images (sha256) are kept once, a train copy winning over val/test (:func:`dedupe_images`);
* near-duplicates (:mod:`~stagetrain.data.leakage`: groups of images linked by perceptual hashes
  within ``organize.near_duplicates`` bits) move as one: a seeded split places each group whole; a
  source's own split keeps a group in its best split (train, then val, then test) and removes its
  images from the others;
* an image that another dataset's raw folder also holds, identical or near, is never put in (or is
  removed from) val/test, so no dataset is tested on what another trains on;
* split: the source's own where it has one (a missing val/test is carved out of its train);
  otherwise seeded and stratified (by each image's rarest class) with scikit-learn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sklearn.model_selection import train_test_split

from stagetrain.config import SPLITS
from stagetrain.data.near_dup import distance

SPLIT_RANK = {"train": 0, "val": 1, "test": 2, None: 3}  # which copy of a duplicate is kept


@dataclass
class Sample:
    """One usable image: its canonical boxes ``(class_id, xc, yc, w, h)`` and where it came from."""

    image: Path
    rel: str  # path inside the raw folder: sort key and output name
    split: str | None  # the source's own split
    digest: str
    boxes: list[tuple[int, float, float, float, float]]
    phash: bytes = b""  # perceptual hash, empty when near-duplicates are not looked for


@dataclass
class Links:
    """What ties a dataset's samples to other images (see :mod:`~stagetrain.data.leakage`)."""

    groups: list[list[Sample]] = field(default_factory=list)  # near-duplicate groups of 2+, each sorted by path
    partners: dict[str, list[tuple[int, Sample]]] = field(default_factory=dict)  # rel -> (distance, near-duplicate), nearest first
    shared: dict[str, dict] = field(default_factory=dict)  # rel -> {duplicate_of, distance, reason}: another dataset holds it


def dedupe_images(samples: list[Sample]) -> tuple[list[Sample], list[dict]]:
    """Keep one sample per image content (train first, then by path); the others as report entries."""
    first: dict[str, Sample] = {}
    removed = []
    for sample in sorted(samples, key=lambda s: (SPLIT_RANK[s.split], s.rel)):
        kept = first.setdefault(sample.digest, sample)
        if kept is not sample:
            reason = "identical to an image kept in this dataset" + (f" ({kept.split})" if kept.split else "")
            removed.append(
                {"file": str(sample.image), "split": sample.split, "duplicate_of": str(kept.image), "distance": 0, "reason": reason}
            )
    keep = {id(s) for s in first.values()}
    return [s for s in samples if id(s) in keep], removed


def _units(samples: list[Sample], links: Links) -> list[list[Sample]]:
    """``samples`` as the units a split moves: each near-duplicate group (its members among ``samples``) or one image."""
    present = {id(s) for s in samples}
    grouped, units = set(), []
    for group in links.groups:
        members = [s for s in group if id(s) in present]
        if members:
            units.append(members)
            grouped.update(id(s) for s in members)
    units += [[s] for s in samples if id(s) not in grouped]
    return units


def _strata(leaders: list[Sample]) -> list[int]:
    """Stratum per unit: its leader's rarest class (spreads rare classes over the splits); -1 background, -2 pooled rare."""
    frequency = Counter(c for s in leaders for c in {b[0] for b in s.boxes})
    strata = [min({b[0] for b in s.boxes}, key=lambda c: (frequency[c], c)) if s.boxes else -1 for s in leaders]
    counts = Counter(strata)
    return [k if counts[k] >= 3 else -2 for k in strata]


def _hold_out(units: list[list[Sample]], images: int, seed: int) -> tuple[list[list[Sample]], list[list[Sample]]]:
    """Seeded split of about ``images`` images (whole units) off ``units``, stratified when every stratum can give one to each side."""
    units = sorted(units, key=lambda unit: unit[0].rel)
    total = sum(map(len, units))
    n = min(round(images * len(units) / total) if total else 0, len(units) - 1)
    if n <= 0:
        return units, []
    strata = _strata([unit[0] for unit in units])
    counts = Counter(strata)
    stratify = strata if min(counts.values()) >= 2 and len(counts) <= min(n, len(units) - n) else None
    rest, held = train_test_split(units, test_size=n, random_state=seed, stratify=stratify)
    return rest, held


def _flat(units: list[list[Sample]]) -> list[Sample]:
    return [s for unit in units for s in unit]


def _pin(units: list[list[Sample]], links: Links) -> tuple[list[list[Sample]], list[list[Sample]]]:
    """Units holding an image another dataset holds (they stay in train), and the free ones."""
    pinned = [u for u in units if any(s.rel in links.shared for s in u)]
    return pinned, [u for u in units if not any(s.rel in links.shared for s in u)]


def _share_note(sample: Sample, links: Links) -> dict:
    return {"file": str(sample.image), "split": sample.split, **links.shared[sample.rel]}


def _partner(sample: Sample, kept: list[Sample], links: Links) -> tuple[Sample, int]:
    """The nearest of ``kept`` to ``sample``: a direct near-duplicate where one is kept, else any (linked through others)."""
    ids = {id(k) for k in kept}
    for bits, other in links.partners.get(sample.rel, []):
        if id(other) in ids:
            return other, bits
    return min(((k, distance(sample.phash, k.phash)) for k in kept), key=lambda pair: (pair[1], pair[0].rel))


def _resolve_groups(splits: dict[str, list[Sample]], links: Links) -> list[dict]:
    """A source's own split: each group keeps its images in its best split; the others leave theirs (returned as notes)."""
    where = {id(s): split for split, members in splits.items() for s in members}
    removed, leaving = [], set()
    for group in links.groups:
        placed = [s for s in group if id(s) in where]
        best = min((where[id(s)] for s in placed), key=SPLIT_RANK.__getitem__, default=None)
        kept = [s for s in placed if where[id(s)] == best]
        for sample in placed:
            if where[id(sample)] != best:
                partner, bits = _partner(sample, kept, links)
                removed.append(
                    {
                        "file": str(sample.image),
                        "split": sample.split,
                        "duplicate_of": str(partner.image),
                        "distance": bits,
                        "reason": f"near-duplicate of an image kept in this dataset ({best})",
                    }
                )
                leaving.add(id(sample))
    for split, members in splits.items():
        splits[split] = [s for s in members if id(s) not in leaving]
    return removed


def _grouped_notes(splits: dict[str, list[Sample]], links: Links) -> list[dict]:
    """Every kept image of a near-duplicate group but its first, with its nearest partner and the split they share."""
    where = {id(s): split for split, members in splits.items() for s in members}
    notes = []
    for group in links.groups:
        kept = [s for s in group if id(s) in where]
        for sample in kept[1:]:
            partner, bits = _partner(sample, [k for k in kept if k is not sample], links)
            notes.append(
                {
                    "file": str(sample.image),
                    "split": where[id(sample)],
                    "duplicate_of": str(partner.image),
                    "distance": bits,
                    "reason": "near-duplicate: its group is kept in one split",
                }
            )
    return notes


def assign_splits(
    samples: list[Sample], fractions: dict[str, float], seed: int, links: Links
) -> tuple[dict[str, list[Sample]], dict[str, str], dict[str, list]]:
    """Split samples: near-duplicate groups whole, images another dataset holds (``links.shared``) out of val/test.

    Args:
        samples: the usable images, identical copies already removed.
        fractions: ``organize.split`` (only for a source without a split of its own).
        seed: the split's seed.
        links: near-duplicate groups and cross-dataset matches.

    Returns:
        The splits, where each split came from (``source``, ``seeded``, ``carved from train``), and notes:
        ``removed`` (images dropped from the source's val/test: shared with another dataset, or a near-duplicate
        of an image kept in a better split), ``kept_in_train`` (shared images a seeded split kept in train),
        ``grouped`` (near-duplicates kept in their group's split) and ``outside_source_split`` (images in no
        split folder of a split source).
    """
    notes: dict[str, list] = {"removed": [], "kept_in_train": [], "grouped": [], "outside_source_split": []}
    sizes = {split: max(1, round(len(samples) * fractions[split])) for split in ("test", "val")}
    if not any(s.split for s in samples):
        pinned, free = _pin(_units(samples, links), links)
        notes["kept_in_train"] = [_share_note(s, links) for s in _flat(pinned) if s.rel in links.shared]
        rest, test = _hold_out(free, sizes["test"], seed)
        train, val = _hold_out(rest, sizes["val"], seed)
        splits = {"train": _flat(train + pinned), "val": _flat(val), "test": _flat(test)}
        notes["grouped"] = _grouped_notes(splits, links)
        return splits, dict.fromkeys(SPLITS, "seeded"), notes
    notes["outside_source_split"] = [str(s.image) for s in samples if s.split is None]
    splits = {split: [s for s in samples if s.split == split] for split in SPLITS}
    origin = dict.fromkeys(SPLITS, "source")
    notes["removed"] += _resolve_groups(splits, links)
    for split in ("test", "val"):
        if not splits[split] and splits["train"]:  # e.g. a Roboflow export with train and valid only
            pinned, free = _pin(_units(splits["train"], links), links)
            rest, held = _hold_out(free, sizes[split], seed)
            splits["train"], splits[split], origin[split] = _flat(rest + pinned), _flat(held), "carved from train"
    for split in ("val", "test"):
        notes["removed"] += [_share_note(s, links) for s in splits[split] if s.rel in links.shared]
        splits[split] = [s for s in splits[split] if s.rel not in links.shared]
    notes["grouped"] = _grouped_notes(splits, links)
    return splits, origin, notes
