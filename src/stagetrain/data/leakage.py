"""Copies across the lines that must not leak: within a dataset, across datasets, and into the unlabelled pool.

A copy is an identical file (sha256) or, with ``organize.near_duplicates: N``, an image whose
perceptual hash (:mod:`~stagetrain.data.near_dup`) is within N bits of the other's. This module
finds them; :mod:`~stagetrain.data.splits` decides where the labelled ones go.

* within a dataset: near-duplicate pairs, linked transitively into groups that a split moves whole;
* other datasets: every image of their raw folders, their ``pool/`` excepted (a pool image that
  copies one of ours is for that dataset's organize to drop, which it does);
* the pool: an image that copies a labelled image (this dataset's, any split, or another's) would
  leak once annotated and is dropped; so is one that copies an earlier pool image (by path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from stagetrain.data import formats, near_dup, validate
from stagetrain.data.splits import Links, Sample
from stagetrain.data.workers import pmap


@dataclass
class Others:
    """The images of the other datasets' raw folders."""

    by_digest: dict[str, str] = field(default_factory=dict)  # sha256 -> the first (sorted) file with that content
    paths: list[str] = field(default_factory=list)  # files with a perceptual hash, in the rows of `hashes`
    hashes: np.ndarray = field(default_factory=lambda: near_dup.EMPTY)


def read_others(workers_pool, other_raw_dirs: Sequence[Path], phash: bool, desc: str) -> Others:
    """Hash every image of ``other_raw_dirs`` (outside their ``pool/``): sha256, and the perceptual hash when asked."""
    files = [
        str(Path(d) / f) for d in other_raw_dirs for f in formats.walk_files(Path(d)) if formats.is_image(f) and not formats.in_pool(f)
    ]
    others, hashed = Others(), []
    for path, (digest, hashes) in zip(files, pmap(workers_pool, partial(validate.fingerprint, phash=phash), files, desc), strict=True):
        if digest:  # "" = unreadable there: nothing to compare
            others.by_digest.setdefault(digest, path)
        if hashes:  # b"" = not decodable there (or not asked for)
            others.paths.append(path)
            hashed.append(hashes)
    others.hashes = near_dup.as_array(hashed)
    return others


def _nearest(a: list[bytes], b: list[bytes] | np.ndarray, max_distance: int) -> dict[int, tuple[int, int]]:
    """Row of ``a`` -> ``(distance, row of b)`` of its nearest hash in ``b`` within ``max_distance`` (first row on ties)."""
    best: dict[int, tuple[int, int]] = {}
    if max_distance > 0 and len(a) and len(b):
        b = b if isinstance(b, np.ndarray) else near_dup.as_array(b)
        for i, j, bits in near_dup.pairs(near_dup.as_array(a), b, max_distance):
            best[i] = min(best.get(i, (bits, j)), (bits, j))
    return best


def link(samples: list[Sample], others: Others, max_distance: int) -> tuple[Links, int]:
    """Near-duplicate groups within ``samples`` and the samples another dataset holds; also the count of near pairs.

    Args:
        samples: a dataset's usable images, identical copies already removed.
        others: the other datasets' images.
        max_distance: ``organize.near_duplicates`` (0: identical files only).
    """
    links = Links()
    hashes = [s.phash for s in samples]
    found = near_dup.pairs(near_dup.as_array(hashes), None, max_distance) if max_distance > 0 else []
    root = list(range(len(samples)))  # union-find over the pairs: a group is every image linked through others

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i, j, bits in found:
        links.partners.setdefault(samples[i].rel, []).append((bits, samples[j]))
        links.partners.setdefault(samples[j].rel, []).append((bits, samples[i]))
        root[max(find(i), find(j))] = min(find(i), find(j))
    for partners in links.partners.values():
        partners.sort(key=lambda pair: (pair[0], pair[1].rel))
    groups: dict[int, list[Sample]] = {}
    for i in sorted({i for pair in found for i in pair[:2]}):
        groups.setdefault(find(i), []).append(samples[i])
    links.groups = sorted((sorted(g, key=lambda s: s.rel) for g in groups.values()), key=lambda g: g[0].rel)
    near = _nearest(hashes, others.hashes, max_distance)
    for i, sample in enumerate(samples):
        if sample.digest in others.by_digest:
            links.shared[sample.rel] = {
                "duplicate_of": others.by_digest[sample.digest],
                "distance": 0,
                "reason": "identical image in another dataset",
            }
        elif i in near:
            bits, j = near[i]
            links.shared[sample.rel] = {
                "duplicate_of": others.paths[j],
                "distance": bits,
                "reason": "near-duplicate of an image in another dataset",
            }
    return links, len(found)


def screen_pool(
    pool: list[Sample], labelled: list[tuple[str | None, Sample]], others: Others, max_distance: int
) -> tuple[list[Sample], list[dict]]:
    """The pool images to keep, and one report entry per image dropped as a copy.

    Args:
        pool: the pool's usable images.
        labelled: every usable labelled image of this dataset with the split it went to (or came from), train first.
        others: the other datasets' images.
        max_distance: ``organize.near_duplicates`` (0: identical files only).
    """
    pool = sorted(pool, key=lambda s: s.rel)
    mine = list(labelled)
    mine_digest: dict[str, tuple[str | None, Sample]] = {}
    for split, sample in mine:
        mine_digest.setdefault(sample.digest, (split, sample))
    hashes = [s.phash for s in pool]
    near_mine = _nearest(hashes, [s.phash for _, s in mine], max_distance)
    near_other = _nearest(hashes, others.hashes, max_distance)
    removed, kept, kept_digest = [], [], {}
    within: dict[int, list[tuple[int, int]]] = {}
    for i, j, bits in near_dup.pairs(near_dup.as_array(hashes), None, max_distance) if max_distance > 0 else []:
        within.setdefault(j, []).append((bits, i))  # j > i: the earlier image is the one kept
    kept_rows = set()
    for i, sample in enumerate(pool):
        entry = {"file": str(sample.image)}
        if sample.digest in mine_digest:
            split, twin = mine_digest[sample.digest]
            entry |= {"duplicate_of": str(twin.image), "distance": 0, "reason": f"identical to a labelled image of this dataset ({split})"}
        elif sample.digest in others.by_digest:
            entry |= {"duplicate_of": others.by_digest[sample.digest], "distance": 0, "reason": "identical to an image in another dataset"}
        elif i in near_mine:
            bits, j = near_mine[i]
            split, twin = mine[j]
            entry |= {
                "duplicate_of": str(twin.image),
                "distance": bits,
                "reason": f"near-duplicate of a labelled image of this dataset ({split})",
            }
        elif i in near_other:
            bits, j = near_other[i]
            entry |= {"duplicate_of": others.paths[j], "distance": bits, "reason": "near-duplicate of an image in another dataset"}
        elif sample.digest in kept_digest:
            entry |= {"duplicate_of": str(kept_digest[sample.digest].image), "distance": 0, "reason": "identical to an earlier pool image"}
        elif any(k in kept_rows for _, k in within.get(i, [])):
            bits, k = min((bits, k) for bits, k in within[i] if k in kept_rows)
            entry |= {"duplicate_of": str(pool[k].image), "distance": bits, "reason": "near-duplicate of an earlier pool image"}
        else:
            kept.append(sample)
            kept_rows.add(i)
            kept_digest[sample.digest] = sample
            continue
        removed.append(entry)
    return kept, removed
