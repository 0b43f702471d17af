"""download@<dataset>: bring a dataset's raw files into ``data/raw/<dataset>``, replaced on every run.

Four kinds, one contract with organize: ``data/raw/<dataset>/`` holds the dataset's own files,
unchanged, plus ``source.json`` = ``{"kind": ..., "format": ...}`` naming the layout organize
should read (``yolo``, ``roboflow``, ``coco``, ``voc`` or ``auto``). It never holds a secret or an
absolute path (queued experiments restore outputs into other folders).

* ``synthetic``: the embedded generator (``images/``, ``labels/``, ``data.yaml``; format ``yolo``): flat, or with
  ``<split>/`` folders and an unlabelled ``pool/`` of images when params give per-split counts.
* ``roboflow``: a dataset version exported through the Roboflow SDK, unzipped as exported
  (YOLO exports: ``train/ valid/ test/`` with ``images/ labels/``, and ``data.yaml``).
* ``annotations``: an annotation package (select@<round>) with its returned labels, or ``oracle``
  (:mod:`stagetrain.data.annotation`): ``images/train/`` + COCO JSON or YOLO labels.
* ``local``: a folder (hard-linked, never re-encoded) or an archive (extracted safely, see
  :mod:`stagetrain.data.archive`; a single top-level folder is unwrapped).

Everything is assembled in a scratch folder beside the output and moved into place at the end,
so a failed run leaves no half-filled output behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from stagetrain import progress
from stagetrain.config import Config, DatasetSpec
from stagetrain.data import annotation, archive, synthetic
from stagetrain.errors import UserError

SOURCE_FILE = "source.json"
ROBOFLOW_EXPORT_IDS = {"yolov5": "yolov5pytorch", "yolov7": "yolov7pytorch"}  # the SDK's short names -> API ids
ROBOFLOW_LAYOUTS = {"coco": "coco", "voc": "voc"}  # what organize reads; every YOLO export is `roboflow`
TEXT_SCAN_LIMIT = 16 * 2**20  # text files larger than this are data, not a README or config that could echo a key
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def run(cfg: Config, dataset: str, out_dir: Path) -> dict:
    """Fetch, copy or generate ``dataset`` into ``out_dir`` (replaced) and return a summary.

    Args:
        cfg: the validated params.
        dataset: a key under ``datasets:``.
        out_dir: the raw output folder, e.g. ``data/raw/<dataset>``.

    Returns:
        ``{"kind", "format", "files", "bytes", ...}``: what the CLI prints.

    Raises:
        UserError: for a missing path or API key, an unsafe archive, or a refused download;
            the message names the params key or file and says how to fix it.
    """
    spec = cfg.datasets[dataset]
    out_dir = Path(out_dir)
    scratch = out_dir.parent / f".{out_dir.name}.download"  # same filesystem: the final move is a rename
    shutil.rmtree(scratch, ignore_errors=True)  # left over by a killed run
    scratch.mkdir(parents=True)
    try:
        staged = scratch / "dataset"
        if spec.kind == "synthetic":
            opts = spec.options
            summary = {"kind": "synthetic", "format": "yolo"}
            counts = opts["images"] if "images" in opts else {s: opts.get(s, 0) for s in synthetic.SPLIT_OFFSETS}
            world = synthetic.World.of(opts)
            render = f"download@{dataset}: render"  # the progress line's name
            summary.update(synthetic.generate(staged, cfg.seed, opts["domain"], counts, opts["size"], cfg.classes, world, render))
        elif spec.kind == "roboflow":
            summary = _roboflow(spec, scratch, staged, cfg.source)
        elif spec.kind == "annotations":
            summary = annotation.import_package(cfg, spec, staged)
        else:
            summary = _local(spec, scratch, staged, cfg.source)
        _write_source(staged, summary)
        summary.update(_count(staged))
        if summary["files"] < 2:  # source.json alone
            raise UserError(f"{cfg.source}: `datasets.{dataset}` holds no files; check its `{spec.kind}:` settings")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _max_bytes(spec: DatasetSpec) -> int | None:
    gib = spec.options.get("max_gib")
    return None if gib is None else int(float(gib) * 2**30)


def _local(spec: DatasetSpec, scratch: Path, staged: Path, src: str) -> dict:
    key = f"datasets.{spec.name}.local.path"
    path = Path(spec.options["path"]).expanduser()
    summary = {"kind": "local", "format": spec.options["format"]}
    if not path.exists():
        where = f" (relative to {Path.cwd()})" if not path.is_absolute() else ""
        raise UserError(f"{src}: `{key}` is {str(path)!r}, which does not exist{where}; fix the path or copy the dataset there")
    if path.is_dir():
        if scratch.resolve().is_relative_to(path.resolve()):  # copying would walk into its own copy
            raise UserError(f"{src}: `{key}` is {str(path)!r}, which contains the output folder; point it at the dataset itself")
        _link_tree(path, staged, key, src)
        return summary
    if not archive.is_archive(path):
        raise UserError(f"{src}: `{key}` is {str(path)!r}: neither a folder nor a {'/'.join(archive.SUFFIXES)} archive; point it at one")
    unpacked = scratch / "unpacked"
    skipped = archive.extract(path, unpacked, _max_bytes(spec), cap_key=f"datasets.{spec.name}.local.max_gib")["skipped"]
    archive.unwrap(unpacked).rename(staged)
    return {**summary, "skipped": len(skipped)} if skipped else summary


def _roboflow(spec: DatasetSpec, scratch: Path, staged: Path, src: str) -> dict:
    where = f"datasets.{spec.name}.roboflow"
    api_key = os.environ.get("ROBOFLOW_API_KEY", "").strip()
    if not api_key:
        raise UserError(
            f"{src}: `{where}` needs a Roboflow API key: export ROBOFLOW_API_KEY=<key> (app.roboflow.com -> Settings -> API Keys); "
            "it is read only from the environment, so it never lands in params.yaml, dvc.lock or git"
        )
    opts = spec.options
    workspace, project, version = opts["workspace"], opts["project"], opts["version"]
    export_id = ROBOFLOW_EXPORT_IDS.get(opts["format"], opts["format"])
    zip_path, link = scratch / "export.zip", ""
    try:
        link = _export_link(api_key, workspace, project, version, export_id)
        _fetch(link, zip_path, _max_bytes(spec) or archive.MAX_BYTES, f"{where}.max_gib")
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the SDK raises bare RuntimeErrors; requests' messages carry the URL, key included
        import requests

        reason = _redact(f"{type(err).__name__}: {err}", api_key, link)
        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            fix = "check the network (and API_URL, if you set it in the environment)"
            raise UserError(f"{src}: `{where}`: cannot reach Roboflow ({reason}); {fix}") from None
        fix = f"check workspace, project and version against app.roboflow.com/{workspace}/{project}/{version}"
        raise UserError(f"{src}: `{where}`: Roboflow refused the export ({reason}); {fix}, and that ROBOFLOW_API_KEY can read it") from None
    unpacked = scratch / "unpacked"
    archive.extract(zip_path, unpacked, _max_bytes(spec), cap_key=f"{where}.max_gib")
    zip_path.unlink()
    archive.unwrap(unpacked).rename(staged)
    summary = {"kind": "roboflow", "format": ROBOFLOW_LAYOUTS.get(export_id, "roboflow"), "export": export_id}
    summary.update(workspace=workspace, project=project, version=version)
    redacted = _scrub(staged, (api_key, link))
    return {**summary, "redacted": redacted} if redacted else summary


def _export_link(api_key: str, workspace: str, project: str, version: int, export_id: str) -> str:
    """Resolve the version through the SDK, have the server build the export, and return its signed link.

    ``Version.download()`` is not used: for YOLO formats it imports ultralytics (torch, and its
    global settings file) only to rewrite data.yaml, and it unzips without a size cap.
    """
    import roboflow  # imported only here: it reads API_URL from the environment once, at import
    from roboflow.adapters import rfapi

    rf_version = roboflow.Roboflow(api_key=api_key).workspace(workspace).project(project).version(version)
    if export_id not in rf_version.exports:
        rf_version.export(export_id)  # asks the server to generate it and polls until it is ready
    info = rfapi.get_version_export(api_key=api_key, workspace_url=workspace, project_url=project, version=str(version), format=export_id)
    if "export" not in info:
        raise RuntimeError(f"export not ready: {info}")
    return info["export"]["link"]


def _fetch(link: str, dest: Path, max_bytes: int, cap_key: str) -> None:
    import requests

    with requests.get(link, stream=True, timeout=60) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0) or None
        with dest.open("wb") as out, progress.phase("download: roboflow export", total, unit="B") as bar:
            for chunk in response.iter_content(archive.CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
                if out.tell() > max_bytes:
                    raise UserError(f"the Roboflow export is larger than {max_bytes / 2**30:.3g} GiB; raise `{cap_key}` in params.yaml")


def _redact(text: str, *secrets: str) -> str:
    for secret in filter(None, secrets):
        text = text.replace(secret, "<redacted>")
    return text


def _scrub(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """Redact the key and the signed link from an export's text files (README, yaml, json); returns those touched.

    Defence in depth: Roboflow does not put either in an export, but nothing under data/raw may hold
    them, and the raw folder is cached by DVC and shared through remotes.
    """
    needles = [s.encode() for s in secrets if s]
    touched = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() in IMAGE_SUFFIXES or path.stat().st_size > TEXT_SCAN_LIMIT:
            continue
        data = path.read_bytes()
        if any(n in data for n in needles):
            for needle in needles:
                data = data.replace(needle, b"<redacted>")
            path.unlink()  # a fresh inode: never write through a hard link
            path.write_bytes(data)
            touched.append(path.relative_to(root).as_posix())
    return touched


def _link_tree(src_dir: Path, staged: Path, key: str, src: str) -> None:
    """Copy a folder with hard links (a copy where a link is impossible), leaving OS metadata out."""
    try:
        shutil.copytree(src_dir, staged, copy_function=archive.link_or_copy, ignore=shutil.ignore_patterns(*archive.JUNK))
    except shutil.Error as err:  # e.g. a dangling symlink or an unreadable file: copytree gathers them all
        problems = "; ".join(f"{s}: {why}" for s, _, why in err.args[0][:5])
        raise UserError(f"{src}: `{key}` could not be copied: {problems}; fix or remove those files") from None
    except OSError as err:  # the folder itself is unreadable
        raise UserError(f"{src}: `{key}` could not be read: {err}") from None


def _write_source(staged: Path, summary: dict) -> None:
    staged.mkdir(parents=True, exist_ok=True)
    target = staged / SOURCE_FILE
    target.unlink(missing_ok=True)  # may be a hard link into the user's folder (a copied raw output): never write through it
    fields = {k: summary[k] for k in ("kind", "format", "export", "workspace", "project", "version") if k in summary}
    target.write_text(json.dumps(fields, indent=2) + "\n")


def _count(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
