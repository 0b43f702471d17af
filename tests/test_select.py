"""select@<round> (select.py): uncertainty scores, deterministic ranking, diversity, params validation, a real model's package."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import repo_params, shrink
from stagetrain import select
from stagetrain.config import parse
from stagetrain.data import annotation, synthetic
from stagetrain.errors import UserError


def _det(name: str, confs: list[float], margins: list[float] | None = None, path: Path | None = None) -> select.Detections:
    boxes = [(0, c, 0.0, 0.0, 10.0, 10.0) for c in confs]
    return select.Detections(path or Path(name), 96, 96, boxes, margins if margins is not None else [0.5] * len(confs))


DETS = [
    _det("d.jpg", [0.9, 0.3]),  # sure of one box
    _det("a.jpg", [0.35, 0.3, 0.25]),  # unsure of all
    _det("c.jpg", []),  # nothing found
    _det("b.jpg", [0.35, 0.1]),  # ties with a.jpg under least_confidence
]


def _order(ranked) -> list[str]:
    return [det.path.name for det, _, _ in ranked]


def test_least_confidence_ranks_by_one_minus_the_top_confidence_ties_by_name():
    ranked = select.rank(DETS, "least_confidence", (0.2, 0.6), 0, "round1")
    assert _order(ranked) == ["c.jpg", "a.jpg", "b.jpg", "d.jpg"]  # nothing found = score 1; a/b tie at 0.65, by name
    assert [round(s, 6) for _, s, _ in ranked] == [1.0, 0.65, 0.65, 0.1]
    assert ranked[1][2] == {"max_conf": 0.35}


def test_band_counts_detections_inside_the_band():
    ranked = select.rank(DETS, "band", (0.2, 0.6), 0, "round1")
    assert _order(ranked) == ["a.jpg", "b.jpg", "d.jpg", "c.jpg"]  # 3, 1, 1 (tie by name), 0
    assert [s for _, s, _ in ranked] == [3.0, 1.0, 1.0, 0.0]


def test_margin_is_the_confidence_weighted_class_ambiguity():
    dets = [
        _det("sure.jpg", [0.8, 0.05], [0.7, 0.0]),  # a clear box; the near-zero margin of a 0.05 box barely counts
        _det("torn.jpg", [0.5], [0.05]),  # one box torn between two classes
        _det("none.jpg", [], []),
    ]
    ranked = select.rank(dets, "margin", (0.2, 0.6), 0, "round1")
    assert _order(ranked) == ["torn.jpg", "sure.jpg", "none.jpg"]
    assert ranked[0][1] == pytest.approx(0.95) and ranked[1][1] == pytest.approx((0.8 * 0.3 + 0.05 * 1.0) / 0.85)
    assert ranked[2][1] == 0.0
    with pytest.raises(UserError, match="`strategy: margin` needs per-class scores"):
        select.rank([select.Detections(Path("x.jpg"), 9, 9, [(0, 0.5, 0, 0, 1, 1)], None)], "margin", (0.2, 0.6), 0, "r")


def test_random_is_seeded_by_seed_and_round_whatever_the_input_order():
    first = _order(select.rank(DETS, "random", (0.2, 0.6), 0, "round1"))
    assert first == _order(select.rank(list(reversed(DETS)), "random", (0.2, 0.6), 0, "round1"))
    others = {tuple(_order(select.rank(DETS, "random", (0.2, 0.6), seed, name))) for seed in (0, 1, 2) for name in ("round1", "round2")}
    assert len(others) > 1  # another seed or round draws another order


def test_diversity_passes_over_near_identical_picks_and_lists_them(tmp_path):
    cfg = parse(shrink(repo_params()))
    paths = []
    for i in range(3):
        image, _ = synthetic.render(0, "target", synthetic.index_of("pool", i), 96, cfg.classes)
        paths.append(tmp_path / f"p{i}.jpg")
        image.save(paths[-1], quality=95)
    with Image.open(paths[0]) as image:
        image.resize((90, 90)).resize((96, 96)).save(tmp_path / "p0_copy.jpg", quality=70)  # a near-duplicate of p0
    dets = [_det(p.name, [0.3], path=p) for p in paths] + [_det("p0_copy.jpg", [0.2], path=tmp_path / "p0_copy.jpg")]
    ranked = select.rank(dets, "least_confidence", (0.2, 0.6), 0, "round1")
    assert _order(ranked)[0] == "p0_copy.jpg"
    chosen, passed = select.pick(ranked, 3, 0)
    assert [d.path.name for d, _, _ in chosen] == ["p0_copy.jpg", "p0.jpg", "p1.jpg"] and passed == []
    chosen, passed = select.pick(ranked, 3, 24)
    assert [d.path.name for d, _, _ in chosen] == ["p0_copy.jpg", "p1.jpg", "p2.jpg"]
    assert [(p["file"], p["like"]) for p in passed] == [("p0.jpg", "p0_copy.jpg")] and passed[0]["distance"] <= 24


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "least_confident"}, r"`select.round1.strategy` .*least_confident.*least_confidence"),
        ({"budget": 0}, r"`select.round1.budget`"),
        ({"band": [0.6, 0.2]}, r"`select.round1.band` is \[0.6, 0.2\]; min must be below max"),
        ({"band": [0.2]}, r"`select.round1.band` is \[0.2\]; use \[min, max\]"),
        ({"conf": 1.5}, r"`select.round1.conf` is 1.5; use a confidence in \[0, 1\)"),
        ({"diversity": 100}, r"`select.round1.diversity` is 100; use 0 \(off\) to 64 bits"),
        ({"model": "stage9"}, r"`select.round1.model` names no stage: 'stage9'"),
        ({"dataset": "targte"}, r"`select.round1.dataset` names no dataset: 'targte'.*target"),
        ({"dataset": "source"}, r"`select.round1.dataset: source` has no unlabelled pool"),
        ({"budgte": 3}, r"select.round1.*budgte"),
    ],
)
def test_select_params_are_validated(change, message):
    params = shrink(repo_params())
    params["select"]["round1"].update(change)
    with pytest.raises(UserError, match=message):
        parse(params)


def test_select_params_parse_with_defaults():
    params = shrink(repo_params())
    params["select"]["round2"] = {"model": "base", "dataset": "target", "budget": 5, "strategy": "random"}
    spec = parse(params).select["round2"]
    assert (spec.band, spec.conf, spec.preannotate, spec.diversity) == ((0.2, 0.6), 0.05, 0.25, 0)
    params["select"] = None
    assert dict(parse(params).select) == {}


@pytest.mark.slow  # trains a model (shared with test_evaluate.py: one 1-epoch checkpoint per session)
def test_real_model_package_is_ranked_deterministic_and_loads(tmp_path_factory, tmp_path):
    from pycocotools.coco import COCO

    from test_evaluate import MODEL, trained_workspace

    workspace = trained_workspace(tmp_path_factory.getbasetemp() / "trained")
    params = shrink(repo_params())
    params["select"]["round1"].update(model=MODEL, budget=2, conf=0.001, preannotate=0.0)
    cfg = parse(params)
    pool = workspace / "organized/images/pool"
    weights = workspace / "models" / MODEL / "best.pt"
    summary = select.run(cfg, "round1", weights, pool, tmp_path / "package.zip")
    assert summary["selected"] == 2 and summary["pool_images"] == len(list(pool.iterdir())) >= 3
    with zipfile.ZipFile(tmp_path / "package.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
        archive.extract(annotation.COCO_FILE, tmp_path)
    scores = {
        det.path.name: 1.0 - max((b[1] for b in det.boxes), default=0.0)
        for det in select.predict(weights, sorted(pool.iterdir()), cfg.imgsz, 0.001, "cpu")
    }
    expected = sorted(scores, key=lambda name: (-scores[name], name))[:2]
    assert [e["file"] for e in manifest["images"]] == expected  # ranked as least_confidence says, on the model's real detections
    assert [e["score"] for e in manifest["images"]] == [pytest.approx(scores[n], abs=1e-6) for n in expected]
    coco = COCO(str(tmp_path / annotation.COCO_FILE))
    assert len(coco.imgs) == 2 and len(coco.anns) == sum(e["detections"] for e in manifest["images"]) > 0
    shutil.move(tmp_path / "package.zip", tmp_path / "first.zip")
    select.run(cfg, "round1", weights, pool, tmp_path / "package.zip")
    assert (tmp_path / "package.zip").read_bytes() == (tmp_path / "first.zip").read_bytes()


def test_stage_cli_naming_an_unknown_round_is_a_clean_error(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "pool").mkdir()
    cmd = [
        sys.executable,
        str(REPO / "stages/select_pool.py"),
        "round9",
        "--weights",
        str(REPO / "params.yaml"),
        "--pool",
        str(tmp_path / "pool"),
    ]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "p.zip"), "--metrics", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "`select` has no round 'round9' (named on the command line); use one of: round1" in proc.stderr
