"""download@<dataset>: Roboflow through the real SDK against a local fake API; local folders and archives."""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_repo
from fake_roboflow import SPLITS, FakeRoboflow
from stagetrain.config import parse
from stagetrain.data import archive, sources
from stagetrain.errors import UserError

KEY = f"rfKey-{secrets.token_hex(10)}"  # random, so no file of the repo holds it; lower case: the SDK takes all-caps for a placeholder
ROBOFLOW = {"kind": "roboflow", "roboflow": {"workspace": "fsb", "project": "cones", "version": 1}, "class_map": {}}


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def clean_env(tmp_path: Path, **extra: str) -> dict:
    """The environment of a stage run: no inherited key, a throwaway HOME (the SDK reads ~/.config/roboflow)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROBOFLOW_API_KEY", "API_URL")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def download_cli(params: dict, dataset: str, out: Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """The real stage CLI, in a subprocess: the SDK reads API_URL at import, so each run needs a fresh interpreter."""
    write_params(cwd / "params.yaml", params)
    cmd = [sys.executable, str(REPO / "stages" / "download.py"), dataset, str(out)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120)


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


# ---------------------------------------------------------------- roboflow


def test_roboflow_export_lands_in_raw_layout(tmp_path, params):
    params["datasets"]["source"] = ROBOFLOW
    out = tmp_path / "data" / "raw" / "source"
    with FakeRoboflow(KEY) as server:
        proc = download_cli(params, "source", out, clean_env(tmp_path, API_URL=server.url, ROBOFLOW_API_KEY=KEY), tmp_path)
    assert proc.returncode == 0, proc.stderr
    for split, count in SPLITS.items():
        assert len(list((out / split / "images").glob("*.jpg"))) == count
        assert len(list((out / split / "labels").glob("*.txt"))) == count
    assert yaml.safe_load((out / "data.yaml").read_text())["names"][0] == "blue_cone"
    assert json.loads((out / "source.json").read_text()) == {
        "kind": "roboflow", "format": "roboflow", "export": "yolov8", "workspace": "fsb", "project": "cones", "version": 1,
    }  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["source"]  # no zip, no scratch folder left
    api_calls = [path for _, path in server.requests if not path.startswith("/signed/")]
    assert api_calls and all(f"api_key={KEY}" in path for path in api_calls)  # it really went through the SDK
    assert KEY not in proc.stdout + proc.stderr
    assert "download@source" in proc.stdout and "'files': 16" in proc.stdout
    assert not any((tmp_path / "home").rglob("*"))  # the SDK wrote no config into $HOME


def test_roboflow_without_key_says_to_export_it(tmp_path, params):
    params["datasets"]["source"] = ROBOFLOW
    proc = download_cli(params, "source", tmp_path / "raw", clean_env(tmp_path), tmp_path)
    assert proc.returncode == 2
    assert "export ROBOFLOW_API_KEY" in proc.stderr and "datasets.source.roboflow" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "raw").exists()


def test_roboflow_unreachable_error_hides_the_key(tmp_path, params):
    params["datasets"]["source"] = ROBOFLOW
    with socket.socket() as s:  # a port nobody listens on: requests' error quotes the URL, ?api_key= included
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env(tmp_path, API_URL=f"http://127.0.0.1:{port}", ROBOFLOW_API_KEY=KEY)
    proc = download_cli(params, "source", tmp_path / "raw", env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot reach Roboflow" in proc.stderr and "api_key=<redacted>" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr


def test_roboflow_wrong_key_or_project_is_a_clean_error(tmp_path, params):
    params["datasets"]["source"] = {**ROBOFLOW, "roboflow": {**ROBOFLOW["roboflow"], "project": "cnoes"}}
    with FakeRoboflow(KEY) as server:
        proc = download_cli(params, "source", tmp_path / "raw", clean_env(tmp_path, API_URL=server.url, ROBOFLOW_API_KEY=KEY), tmp_path)
        wrong_key = download_cli(
            params, "source", tmp_path / "raw", clean_env(tmp_path, API_URL=server.url, ROBOFLOW_API_KEY="wrongkey"), tmp_path
        )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "app.roboflow.com/fsb/cnoes/1" in proc.stderr and "does not exist" in proc.stderr
    assert wrong_key.returncode == 2 and "This API key does not exist" in wrong_key.stderr


def test_dvc_repro_leaves_no_trace_of_the_key(tmp_path, params):
    repo = copy_repo(tmp_path / "repo")
    params["datasets"]["source"] = ROBOFLOW
    write_params(repo / "params.yaml", params)
    # a hostile server that echoes the key and the signed link into the export: the scrubber must catch both
    with FakeRoboflow(KEY, echo_key_in_readme=True) as server:
        env = clean_env(tmp_path, API_URL=server.url, ROBOFLOW_API_KEY=KEY, DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"))
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "download@source"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = repo / "data" / "raw" / "source"
    assert (raw / "data.yaml").exists() and "<redacted>" in (raw / "README.roboflow.txt").read_text()
    assert "download@source" in (repo / "dvc.lock").read_text()
    assert KEY not in proc.stdout + proc.stderr
    for root in (repo, tmp_path / "home", tmp_path / "dvc-site"):  # repo: .dvc/cache, .dvc/tmp, dvc.lock, .git, data/
        assert files_holding(root, KEY.encode()) == []
        assert files_holding(root, server.link.encode()) == []


# ---------------------------------------------------------------- local


def local_params(params: dict, path: Path | str, **options) -> dict:
    params["datasets"]["target"] = {"kind": "local", "local": {"path": str(path), **options}, "class_map": {}}
    return params


def make_folder(root: Path) -> Path:
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        (root / split / "images" / "a.jpg").write_bytes(b"\xff\xd8 not re-encoded \xff\xd9")
        (root / split / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text("names: [blue_cone]\n")
    return root


def test_local_folder_is_hard_linked_and_source_json_written(tmp_path, params):
    src = make_folder(tmp_path / "dataset")
    (src / ".DS_Store").write_bytes(b"junk")
    (src / "source.json").write_text("the user's own file\n")  # e.g. a copied raw output: must not be written through
    out = tmp_path / "raw" / "target"
    summary = sources.run(parse(local_params(params, src)), "target", out)
    assert (out / "train" / "images" / "a.jpg").stat().st_ino == (src / "train" / "images" / "a.jpg").stat().st_ino
    assert (out / "valid" / "labels" / "a.txt").read_text() == "0 0.5 0.5 0.1 0.1\n"
    assert json.loads((out / "source.json").read_text()) == {"kind": "local", "format": "auto"}
    assert (src / "source.json").read_text() == "the user's own file\n"
    assert not (out / ".DS_Store").exists()
    assert summary["files"] == 6 and summary["bytes"] > 0 and summary["kind"] == "local"
    assert sorted(p.name for p in out.parent.iterdir()) == ["target"]


def make_archive(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    prefix = f"{top}/" if top else ""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(prefix + name, data)
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith(("gz", "tgz")) else "w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


DATASET = {"images/a.jpg": b"\xff\xd8 jpeg \xff\xd9", "labels/a.txt": b"0 0.5 0.5 0.1 0.1\n", "data.yaml": b"names: [blue_cone]\n"}


@pytest.mark.parametrize("name", ["d.zip", "d.tar.gz", "d.tgz", "d.tar"])
@pytest.mark.parametrize("top", ["", "fsoco"])
def test_local_archive_extracts_and_unwraps_a_single_top_folder(tmp_path, params, name, top):
    path = make_archive(tmp_path / name, DATASET, top)
    out = tmp_path / "raw" / "target"
    summary = sources.run(parse(local_params(params, path, format="yolo")), "target", out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "data.yaml",
        "images/a.jpg",
        "labels/a.txt",
        "source.json",
    ]
    assert (out / "images" / "a.jpg").read_bytes() == DATASET["images/a.jpg"]
    assert json.loads((out / "source.json").read_text()) == {"kind": "local", "format": "yolo"}
    assert summary["files"] == 4


def test_zip_from_macos_leaves_metadata_out(tmp_path, params):
    path = make_archive(tmp_path / "d.zip", {**DATASET, "__MACOSX/images/._a.jpg": b"\0\5\26\7", "images/.DS_Store": b"x"}, "top")
    out = tmp_path / "raw"
    summary = sources.run(parse(local_params(params, path)), "target", out)
    assert (out / "images" / "a.jpg").exists() and not list(out.rglob("._*")) and not list(out.rglob(".DS_Store"))
    assert summary["skipped"] == 2


def test_missing_path_names_the_key(tmp_path, params):
    with pytest.raises(UserError, match=r"`datasets\.target\.local\.path` is .*nowhere\.zip.*does not exist"):
        sources.run(parse(local_params(params, tmp_path / "nowhere.zip")), "target", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_previous_output_survives_a_failed_run(tmp_path, params):
    out = tmp_path / "raw"
    sources.run(parse(local_params(params, make_folder(tmp_path / "ok"))), "target", out)
    bad = make_archive(tmp_path / "bad.zip", {"../evil.txt": b"x"})
    with pytest.raises(UserError):
        sources.run(parse(local_params(params, bad)), "target", out)
    assert (out / "data.yaml").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "ok", "raw"]


def tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("data.yaml")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"names:"))
        member.size = len(data) if member.isreg() else 0
        tf.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return path


def zip_symlink(path: Path, name: str, target: str) -> Path:
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16  # how `zip --symlinks` stores one
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.yaml", "names:")
        zf.writestr(info, target)
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "make, entry",
    [
        (lambda p: make_archive(p.with_suffix(".zip"), {"../evil.txt": b"x"}), "../evil.txt"),
        (lambda p: make_archive(p.with_suffix(".zip"), {"images/../../evil.txt": b"x"}), "images/../../evil.txt"),
        (lambda p: tar_with(p, tarfile.TarInfo("../evil.txt"), b"x"), "../evil.txt"),
        (lambda p: tar_with(p, tarfile.TarInfo("/tmp/evil.txt"), b"x"), "/tmp/evil.txt"),
        (lambda p: tar_with(p, link("images/evil", "../../outside.txt")), "images/evil"),
        (lambda p: tar_with(p, link("evil", "/etc/passwd")), "evil"),
        (lambda p: tar_with(p, link("evil", "../outside.txt", tarfile.LNKTYPE)), "evil"),
        (lambda p: zip_symlink(p.with_suffix(".zip"), "labels/evil", "../../outside.txt"), "labels/evil"),
    ],
    ids=[
        "zip-dotdot",
        "zip-nested-dotdot",
        "tar-dotdot",
        "tar-absolute",
        "tar-symlink-out",
        "tar-symlink-absolute",
        "tar-hardlink-out",
        "zip-symlink-out",
    ],
)
def test_unsafe_entries_are_refused_by_name(tmp_path, params, make, entry):
    (tmp_path / "outside.txt").write_text("must stay untouched\n")
    bad = make(tmp_path / "bad.tar.gz")
    with pytest.raises(UserError, match="refusing") as err:
        sources.run(parse(local_params(params, bad)), "target", tmp_path / "raw" / "target")
    assert repr(entry) in str(err.value) and str(bad) in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert (tmp_path / "outside.txt").read_text() == "must stay untouched\n"
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_links_inside_the_archive_become_copies(tmp_path):
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as tf:
        for info, data in [
            (tarfile.TarInfo("images/a.jpg"), b"jpeg"),
            (link("images/b.jpg", "a.jpg"), None),
            (link("c.jpg", "images/a.jpg", tarfile.LNKTYPE), None),
        ]:
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data) if data else None)
    archive.extract(path, tmp_path / "out")
    for name in ("images/b.jpg", "c.jpg"):
        assert not (tmp_path / "out" / name).is_symlink() and (tmp_path / "out" / name).read_bytes() == b"jpeg"


def test_size_cap_stops_extraction(tmp_path, params):
    path = make_archive(tmp_path / "d.zip", {"images/big.png": os.urandom(4096)})
    with pytest.raises(UserError, match=r"more than .* GiB.*raise `datasets\.target\.local\.max_gib`"):
        sources.run(parse(local_params(params, path, max_gib=1000 / 2**30)), "target", tmp_path / "raw")
    tar = make_archive(tmp_path / "d.tar.gz", {"images/big.png": os.urandom(4096)})  # tar sizes are counted as it streams
    with pytest.raises(UserError, match="more than"):
        archive.extract(tar, tmp_path / "t", max_bytes=1000)


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tar.gz"])
def test_compression_ratio_cap_stops_a_bomb(tmp_path, params, monkeypatch, name):
    monkeypatch.setattr(archive, "RATIO_FLOOR", 1 << 16)  # judge the ratio from 64 KiB on, not 64 MiB
    path = make_archive(tmp_path / name, {"zeros.bin": bytes(8 << 20)})
    with pytest.raises(UserError, match="zip bomb"):
        sources.run(parse(local_params(params, path)), "target", tmp_path / "raw")


def test_not_an_archive_and_corrupt_archive(tmp_path, params):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"neither a folder nor a \.zip"):
        sources.run(parse(local_params(params, tmp_path / "notes.txt")), "target", tmp_path / "raw")
    (tmp_path / "broken.zip").write_bytes(b"PK\3\4 truncated")
    with pytest.raises(UserError, match="broken.zip: cannot be extracted"):
        sources.run(parse(local_params(params, tmp_path / "broken.zip")), "target", tmp_path / "raw")


def test_cli_prints_the_error_without_traceback(tmp_path, params):
    proc = download_cli(local_params(params, tmp_path / "missing"), "target", tmp_path / "raw", clean_env(tmp_path), tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "`datasets.target.local.path`" in proc.stderr


def test_synthetic_raw_folder_says_its_format(tmp_path, params):
    summary = sources.run(parse(params), "target", tmp_path / "raw")
    assert json.loads((tmp_path / "raw" / "source.json").read_text()) == {"kind": "synthetic", "format": "yolo"}
    assert summary["images"] == 40 and summary["files"] == 2 * 40 + 2


# ---------------------------------------------------------------- params validation


@pytest.mark.parametrize(
    "block, message",
    [
        ({"kind": "roboflow", "roboflow": {"workspace": "fsb", "project": "cones"}}, r"missing key `datasets\.x\.roboflow\.version`"),
        ({"kind": "roboflow", "roboflow": {**ROBOFLOW["roboflow"], "api_key": "k"}}, r"unknown key `datasets\.x\.roboflow\.api_key`"),
        (
            {"kind": "roboflow", "roboflow": {**ROBOFLOW["roboflow"], "format": "yolov88"}},
            r"`datasets\.x\.roboflow\.format` is 'yolov88'; did you mean `yolov8`",
        ),
        (
            {"kind": "roboflow", "roboflow": {**ROBOFLOW["roboflow"], "project": "fsb/cones"}},
            r"app\.roboflow\.com/<workspace>/<project>/<version>",
        ),
        ({"kind": "local", "local": {"path": "d.zip", "format": "pascal"}}, r"`datasets\.x\.local\.format` is 'pascal'; use one of: auto"),
        ({"kind": "local", "local": {"path": "d.zip", "max_gib": 0}}, r"`datasets\.x\.local\.max_gib` is 0.0; use a value > 0"),
        ({"kind": "local", "local": {}}, r"missing key `datasets\.x\.local\.path`"),
    ],
)
def test_params_blocks_are_validated(params, block, message):
    params["datasets"]["x"] = block
    with pytest.raises(UserError, match=message):
        parse(params)


def test_params_defaults_are_filled(params):
    params["datasets"]["x"] = ROBOFLOW
    params["datasets"]["y"] = {"kind": "local", "local": {"path": "/nowhere"}}  # not checked until download: other stages load params too
    cfg = parse(params)
    assert cfg.datasets["x"].options["format"] == "yolov8" and cfg.datasets["y"].options["format"] == "auto"


def test_empty_source_and_source_containing_the_output_are_refused(tmp_path, params, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"`datasets\.target` holds no files"):
        sources.run(parse(local_params(params, tmp_path / "empty")), "target", tmp_path / "raw")
    monkeypatch.chdir(tmp_path)  # `path: .` with the output inside it, as in a repo root
    make_folder(tmp_path / "data")
    with pytest.raises(UserError, match="contains the output folder"):
        sources.run(parse(local_params(params, ".")), "target", Path("data/raw/target"))
