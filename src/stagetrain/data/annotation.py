"""Annotation packages: what select@<round> sends out, and the labels that come back as a dataset.

Package (``data/annotation/<round>/package.zip``), the layout CVAT ("COCO 1.0") and Label Studio's
COCO import read::

    images/<file>                        the selected pool images, bytes unchanged
    annotations/instances_default.json   COCO: the images, the canonical classes (ids from 1), and the
                                         model's detections as pre-annotations (bbox [x, y, w, h] in px,
                                         area, iscrowd 0, score)
    thumbnails/<stem>.jpg                <= 128 px previews with the pre-annotations drawn
    guidelines.md                        the class list with a description of each, and the box rules
    manifest.json                        the round's params, every image's rank, score, sha256 and
                                         detections, and the candidates passed over (diversity)

The zip is byte-for-byte deterministic (fixed timestamps, sorted entries): DVC sees a rerun with the
same inputs as unchanged.

Import (``kind: annotations``, download@<dataset>): the package's images plus returned labels (a COCO
JSON, a folder of YOLO ``.txt`` files named like the images, or ``oracle``) become a raw dataset
(``images/train/`` + COCO JSON or YOLO labels) that organize validates like any other. A label for an
image that was not in the package, or a file that is not a label, is an error naming it; a package
image that came back without labels is left out and listed (``not_returned``). ``oracle`` (tests and
benchmarks only) re-renders the true labels of a synthetic pool (:func:`stagetrain.data.synthetic.render`)
and checks each re-rendered image against the package's bytes, so a changed seed or world is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from stagetrain.config import Config, DatasetSpec
from stagetrain.data import synthetic
from stagetrain.errors import UserError

COCO_FILE = "annotations/instances_default.json"  # CVAT's name for a COCO 1.0 export's one subset
MANIFEST = "manifest.json"
GUIDELINES = "guidelines.md"
ORACLE = "oracle"
THUMBNAIL = 128  # px, longest side
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: no wall clock in the output
DESCRIPTIONS = {  # guideline lines for the known cone classes (Formula Student rules); others get a generic line
    "blue_cone": "small blue cone with a white stripe: the track's left boundary",
    "yellow_cone": "small yellow cone with a black stripe: the track's right boundary",
    "orange_cone": "small orange cone with white stripes: entry and exit lanes, start area",
    "large_orange_cone": "large (tall) orange cone with white stripes: before and after timing lines",
    "unknown_cone": "a cone whose colour cannot be told (dark, far, blurred, backlit)",
}
BOX_RULES = (
    "Draw one box per object, tight around its visible pixels; clip it at the image border.",
    "Label an object only when at least about 40% of it is visible (the rule the training data follows).",
    "Do not label look-alikes: barrels, signs, people in hi-vis, tyre stacks, tape on the ground.",
    "Pre-annotations are the model's guesses (`score` = its confidence): correct, delete or add boxes freely.",
    "An image with no objects is returned with no boxes (it is still a labelled image).",
)


@dataclass
class Pick:
    """One selected image: its file, rank (1 = first), uncertainty score and the model's detections."""

    path: Path
    rank: int
    score: float
    width: int
    height: int
    detections: list[tuple[int, float, float, float, float, float]]  # (class_id, conf, x0, y0, x1, y1) in px
    stats: dict = field(default_factory=dict)  # strategy figures beside the score (max_conf, min_margin, in_band)


def _add(archive: zipfile.ZipFile, name: str, data: bytes, compress: bool) -> None:
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def guidelines(classes: Sequence[str], meta: Mapping) -> str:
    lines = [f"# Annotation guidelines: round `{meta['round']}`", ""]
    lines += [f"{len(meta['images'])} images from the unlabelled pool of `{meta['dataset']}`, ranked by `{meta['strategy']}`.", ""]
    lines += ["## Classes", "", "| id | class | what it is |", "|---|---|---|"]
    lines += [f"| {i} | {c} | {DESCRIPTIONS.get(c, f'an object of class `{c}`')} |" for i, c in enumerate(classes, 1)]
    lines += ["", "## Boxes", "", *(f"- {rule}" for rule in BOX_RULES), ""]
    lines += ["Return `annotations/instances_default.json` (COCO) or one YOLO `.txt` per image, named like the image.", ""]
    return "\n".join(lines)


def coco(picks: Sequence[Pick], classes: Sequence[str], preannotate: float) -> dict:
    """The package's COCO JSON: images (file names relative to ``images/``), categories from 1, pre-annotations."""
    images, annotations = [], []
    for image_id, pick in enumerate(picks, 1):
        images.append({"id": image_id, "file_name": pick.path.name, "width": pick.width, "height": pick.height})
        for class_id, conf, x0, y0, x1, y1 in pick.detections:
            if conf < preannotate:
                continue
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_id + 1,
                    "bbox": [round(x0, 2), round(y0, 2), w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "segmentation": [],
                    "score": round(conf, 4),
                }
            )
    categories = [{"id": i, "name": c, "supercategory": ""} for i, c in enumerate(classes, 1)]
    info = {"description": "stagetrain annotation package (pre-annotations are model detections)", "version": "1.0"}
    return {"info": info, "licenses": [], "categories": categories, "images": images, "annotations": annotations}


def _thumbnail(pick: Pick, preannotate: float) -> bytes:
    with Image.open(pick.path) as image:
        thumb = image.convert("RGB")
    scale = THUMBNAIL / max(thumb.size)
    if scale < 1:
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))), Image.Resampling.BILINEAR)
    else:
        scale = 1.0
    pen = ImageDraw.Draw(thumb)
    for _, conf, x0, y0, x1, y1 in pick.detections:
        if conf >= preannotate:
            pen.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(255, 0, 255))
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def write_package(out_zip: Path, picks: Sequence[Pick], classes: Sequence[str], meta: dict, preannotate: float) -> dict:
    """Write the package zip (replaced atomically); return the manifest it holds."""
    manifest = {**meta, "classes": list(classes), "images": []}
    for pick in picks:
        data = pick.path.read_bytes()
        entry = {"file": pick.path.name, "rank": pick.rank, "score": round(pick.score, 6), "sha256": hashlib.sha256(data).hexdigest()}
        entry |= {"detections": len(pick.detections), **pick.stats}
        manifest["images"].append(entry)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = out_zip.with_name(f".{out_zip.name}.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        _add(archive, MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), True)
        _add(archive, GUIDELINES, guidelines(classes, manifest).encode(), True)
        _add(archive, COCO_FILE, (json.dumps(coco(picks, classes, preannotate), indent=1) + "\n").encode(), True)
        for pick in picks:
            _add(archive, f"images/{pick.path.name}", pick.path.read_bytes(), False)
            _add(archive, f"thumbnails/{pick.path.stem}.jpg", _thumbnail(pick, preannotate), False)
    partial.replace(out_zip)
    return manifest


# --- import ----------------------------------------------------------------------------------------


def read_manifest(package: Path, key: str, src: str) -> dict:
    if not package.is_file():
        where = f" (relative to {Path.cwd()})" if not package.is_absolute() else ""
        raise UserError(f"{src}: `{key}` is {str(package)!r}, which does not exist{where}; run `dvc repro select@<round>` or fix the path")
    try:
        with zipfile.ZipFile(package) as archive:
            manifest = json.loads(archive.read(MANIFEST))
        if not isinstance(manifest.get("images"), list) or not isinstance(manifest.get("classes"), list):
            raise KeyError("images/classes")
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise UserError(f"{package}: not an annotation package written by select@<round> ({type(err).__name__}: {err})") from None
    return manifest


def _returned_coco(labels: Path, names: set[str]) -> tuple[dict, set[str]]:
    """The returned COCO JSON with bare file names; every image it lists must be a package image."""
    try:
        data = json.loads(labels.read_bytes())
        listed = data["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{labels}: not a COCO JSON ({type(err).__name__}: {err}); return the package's annotations/ file format") from None
    unknown = sorted({str(i.get("file_name")) for i in listed if Path(str(i.get("file_name", ""))).name not in names})
    if unknown:
        raise UserError(
            f"{labels}: {len(unknown)} images were not in the package: {', '.join(unknown[:10])}; "
            "return labels for the package's images only (manifest.json lists them)"
        )
    for image in listed:
        image["file_name"] = Path(str(image["file_name"])).name
    return data, {image["file_name"] for image in listed}


def _returned_yolo(labels: Path, stems: dict[str, str]) -> dict[str, str]:
    """``image file -> label text`` from a folder of YOLO ``.txt`` files named like the package's images."""
    found, unknown = {}, []
    for path in sorted(p for p in labels.rglob("*") if p.is_file()):
        rel = path.relative_to(labels).as_posix()
        if path.name in ("classes.txt", "obj.names") or path.suffix.lower() in (".yaml", ".yml"):
            continue  # the names file annotation tools write beside YOLO labels: the package's classes are canonical
        if path.suffix != ".txt" or path.stem not in stems:
            unknown.append(rel)
        else:
            found[stems[path.stem]] = path.read_text()
    if unknown:
        raise UserError(
            f"{labels}: {len(unknown)} files are not labels of a package image: {', '.join(unknown[:10])}; "
            "keep one <image stem>.txt per returned image (manifest.json lists them), nothing else"
        )
    return found


def _oracle(cfg: Config, manifest: dict, package: zipfile.ZipFile, src: str) -> dict[str, str]:
    """True YOLO labels of a synthetic pool's images, re-rendered; each image must match the package's bytes."""
    dataset = manifest.get("dataset")
    spec = cfg.datasets.get(dataset)
    if spec is None or spec.kind != "synthetic" or not spec.options.get("pool"):
        raise UserError(
            f"{src}: `labels: oracle` answers packages from a synthetic dataset's pool only; this package came from "
            f"{dataset!r} ({'not in params' if spec is None else spec.kind}): return real labels (COCO JSON or YOLO folder)"
        )
    opts, world = spec.options, synthetic.World.of(spec.options)
    pattern = re.compile(rf"{re.escape(opts['domain'])}_pool_(\d+)\.jpg")
    labels = {}
    for entry in manifest["images"]:
        match = pattern.fullmatch(entry["file"])
        if match is None:
            raise UserError(f"{src}: `labels: oracle`: {entry['file']} is not a pool image of synthetic `{dataset}`")
        image, boxes = synthetic.render(
            cfg.seed, opts["domain"], synthetic.index_of("pool", int(match[1])), opts["size"], cfg.classes, world
        )
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=95)  # as synthetic._write saves it
        if encoded.getvalue() != package.read(f"images/{entry['file']}"):
            raise UserError(
                f"{src}: `labels: oracle`: {entry['file']} differs from pool image {match[1]} of `{dataset}` as params render it now "
                "(seed or synthetic settings changed since the package was made); rerun select@<round>"
            )
        labels[entry["file"]] = "".join(f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}\n" for c, xc, yc, w, h in boxes)
    return labels


def import_package(cfg: Config, spec: DatasetSpec, staged: Path) -> dict:
    """Write ``staged`` (download's raw folder) from a returned package; return download's summary fields."""
    src, where = cfg.source, f"datasets.{spec.name}.annotations"
    package_path, labels_value = Path(spec.options["package"]), str(spec.options["labels"])
    manifest = read_manifest(package_path, f"{where}.package", src)
    names = [entry["file"] for entry in manifest["images"]]
    with zipfile.ZipFile(package_path) as package:
        if labels_value == ORACLE:
            returned, fmt = _oracle(cfg, manifest, package, src), "yolo"
        else:
            labels = Path(labels_value)
            if not labels.exists():
                raise UserError(f"{src}: `{where}.labels` is {labels_value!r}, which does not exist; point it at the returned labels")
            if labels.is_dir():
                returned, fmt = _returned_yolo(labels, {Path(n).stem: n for n in names}), "yolo"
            else:
                coco_data, returned_names = _returned_coco(labels, set(names))
                returned, fmt = dict.fromkeys(returned_names, ""), "coco"
        (staged / "images" / "train").mkdir(parents=True)
        for name in names:
            if name in returned:
                (staged / "images" / "train" / name).write_bytes(package.read(f"images/{name}"))
    if fmt == "coco":
        (staged / "annotations").mkdir()
        (staged / "annotations" / "instances_train.json").write_text(json.dumps(coco_data))
    else:
        (staged / "labels" / "train").mkdir(parents=True)
        for name, text in returned.items():
            (staged / "labels" / "train" / f"{Path(name).stem}.txt").write_text(text)
        classes = cfg.classes if labels_value == ORACLE else manifest["classes"]  # the oracle renders with params' ids
        names_yaml = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
        (staged / "data.yaml").write_text(f"# returned labels of annotation round {manifest.get('round')}\nnames:\n{names_yaml}\n")
    not_returned = [n for n in names if n not in returned]
    summary = {"kind": "annotations", "format": fmt, "round": manifest.get("round"), "returned": len(returned)}
    return summary | {"not_returned": len(not_returned), "not_returned_files": not_returned}
