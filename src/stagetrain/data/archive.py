"""Safe extraction of dataset archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``).

A dataset archive comes from outside the repo (a colleague's share, a web export), so it is
treated as untrusted: an entry with a ``..`` component or an absolute path, or a link whose
target leaves the destination, is refused with the entry's name; a size cap and a
compression-ratio cap stop zip bombs before they fill the disk. Only regular files and folders
are ever written: links inside the archive are materialised as copies of their target, so no
symlink on disk can redirect a later write outside the destination.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stagetrain import progress
from stagetrain.errors import UserError

SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
MAX_BYTES = 20 * 2**30  # total uncompressed bytes; params raise it per dataset with `max_gib`
MAX_RATIO = 200  # uncompressed / compressed; image datasets are ~1, label text ~5, zip bombs 1000+
RATIO_FLOOR = 64 * 2**20  # the ratio is judged only past this many bytes: tiny text archives compress well
JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")  # OS metadata that would reach organize as broken images
CHUNK = 1 << 20


def is_archive(path: Path) -> bool:
    """True when ``path`` names a supported archive by its suffix."""
    return path.name.lower().endswith(SUFFIXES)


@dataclass
class _Entry:
    name: str  # normalised relative POSIX path inside the archive
    kind: str  # "file", "dir" or "link"
    size: int = 0
    link: str | None = None  # for links: normalised target path inside the archive
    open: Callable[[], IO[bytes]] | None = None  # for files: opens the entry's content


@dataclass
class _Budget:
    archive: Path
    compressed: int
    max_bytes: int
    max_ratio: float
    cap_key: str
    written: int = 0
    files: int = 0
    skipped: list[str] = field(default_factory=list)

    def charge(self, nbytes: int, entry: str) -> None:
        self.written += nbytes
        self.check(self.written, entry)

    def check(self, total: int, entry: str) -> None:
        if total > self.max_bytes:
            raise UserError(
                f"{self.archive}: refusing to extract more than {self.max_bytes / 2**30:.3g} GiB (reached at entry {entry!r}); "
                f"if the dataset really is that large, raise `{self.cap_key}` in params.yaml"
            )
        if total > RATIO_FLOOR and total / max(self.compressed, 1) > self.max_ratio:
            raise UserError(
                f"{self.archive}: expands more than {self.max_ratio:g}x its size (at entry {entry!r}); "
                "this looks like a zip bomb, not a dataset: re-create the archive from the dataset folder"
            )


def _clean_name(raw: str, archive: Path) -> str:
    """Refuse absolute paths and ``..``; return the entry's relative POSIX path (``""`` for the root)."""
    name = raw.replace("\\", "/")  # archives made on Windows may use backslashes
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive}: entry {raw!r} has an absolute path; refusing to extract an archive that writes outside its folder")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"{archive}: entry {raw!r} contains `..`; refusing to extract an archive that writes outside its folder")
    return "/".join(parts)


def _link_target(entry: str, target: str, relative_to_entry: bool, raw: str, archive: Path) -> str:
    """The normalised in-archive path a link points to; refuse one that leaves the archive's root."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise UserError(f"{archive}: link {raw!r} points to the absolute path {target!r}; refusing links that leave the dataset")
    base = posixpath.dirname(entry) if relative_to_entry else ""
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../"):
        raise UserError(f"{archive}: link {raw!r} points to {target!r}, outside the dataset; refusing to extract it")
    return "" if resolved == "." else resolved


def _zip_entries(zf: zipfile.ZipFile, archive: Path) -> Iterator[_Entry]:
    for info in zf.infolist():
        name = _clean_name(info.filename, archive)
        unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: made on Unix, the only maker of links
        if stat.S_ISLNK(unix_mode):  # zipfile itself would write the target path as the file's content
            target = zf.read(info).decode("utf-8", "replace")
            yield _Entry(name, "link", link=_link_target(name, target, True, info.filename, archive))
        elif info.is_dir():
            yield _Entry(name, "dir")
        else:
            yield _Entry(name, "file", info.file_size, open=lambda info=info: zf.open(info))


def _tar_entries(tf: tarfile.TarFile, archive: Path) -> Iterator[_Entry]:
    for member in tf:  # sequential: a .tar.gz is read once, and the caps apply as it streams
        name = _clean_name(member.name, archive)
        if member.issym():
            yield _Entry(name, "link", link=_link_target(name, member.linkname, True, member.name, archive))
        elif member.islnk():  # hard link targets are archive paths, relative to the root
            yield _Entry(name, "link", link=_link_target(name, member.linkname, False, member.name, archive))
        elif member.isdir():
            yield _Entry(name, "dir")
        elif member.isreg():
            yield _Entry(name, "file", member.size, open=lambda member=member: tf.extractfile(member))
        else:
            raise UserError(
                f"{archive}: entry {member.name!r} is a device, FIFO or other special file; a dataset holds only files and folders"
            )


def _copy(src: IO[bytes], dst: Path, budget: _Budget, entry: str) -> None:
    with dst.open("wb") as out:
        while chunk := src.read(CHUNK):
            budget.charge(len(chunk), entry)  # counts real bytes: a header may understate a size
            out.write(chunk)


def _materialise_links(links: dict[str, str], dest: Path, archive: Path) -> None:
    """Write each link as a copy of what it finally points to (a file, or a folder copied with hard links)."""
    for name, first in links.items():
        target, hops = first, 0
        while target in links:  # link to a link: follow the chain inside the archive
            target, hops = links[target], hops + 1
            if hops > 40:
                raise UserError(f"{archive}: link {name!r} is part of a loop; fix or remove it")
        source, out = dest / target, dest / name
        if not source.exists():
            raise UserError(f"{archive}: link {name!r} points to {target!r}, which is not in the archive")
        out.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            if out.resolve().is_relative_to(source.resolve()):
                raise UserError(f"{archive}: link {name!r} points to a folder that contains it; remove the link")
            shutil.copytree(source, out, copy_function=link_or_copy, dirs_exist_ok=True)
        else:
            link_or_copy(source, out)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` to ``dst``; copy (with metadata) where a link is impossible (other filesystem)."""
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def extract(archive: Path, dest: Path, max_bytes: int | None = None, max_ratio: float | None = None, cap_key: str = "max_gib") -> dict:
    """Extract ``archive`` into the new folder ``dest``, refusing unsafe entries and oversized content.

    Args:
        archive: a ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz`` file.
        dest: the folder to create; it must not exist yet. On error it may hold partial content:
            extract into a scratch folder and move it into place on success.
        max_bytes: cap on total uncompressed bytes (default :data:`MAX_BYTES`).
        max_ratio: cap on uncompressed / compressed size (default :data:`MAX_RATIO`).
        cap_key: the params key that raises ``max_bytes``, named in the error message.

    Returns:
        ``{"files": n, "bytes": n, "skipped": [...]}``; ``skipped`` lists OS metadata left out (``__MACOSX``, ``.DS_Store``).

    Raises:
        UserError: naming the archive and the entry, for every unsafe or unreadable archive.
    """
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes  # module constants read per call: tests lower them
    budget = _Budget(archive, archive.stat().st_size, max_bytes, MAX_RATIO if max_ratio is None else max_ratio, cap_key)
    dest.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                if infos:  # a zip declares its sizes up front: refuse a bomb before writing anything
                    budget.check(sum(info.file_size for info in infos), infos[-1].filename)
                _write(progress.track(_zip_entries(zf, archive), f"extract {archive.name}", len(infos), "entries"), dest, budget)
        else:
            with tarfile.open(archive, "r:*") as tf:
                _write(progress.track(_tar_entries(tf, archive), f"extract {archive.name}", unit="entries"), dest, budget)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError) as err:
        # RuntimeError: zipfile's "password required"; OSError: a truncated gzip stream or a full disk
        raise UserError(f"{archive}: cannot be extracted ({err}); re-download or re-create the archive") from None
    return {"files": budget.files, "bytes": budget.written, "skipped": budget.skipped}


def _write(entries: Iterator[_Entry], dest: Path, budget: _Budget) -> None:
    links: dict[str, str] = {}
    for entry in entries:
        if not entry.name:
            continue  # the archive's root itself ("./")
        if any(part in JUNK for part in entry.name.split("/")):
            budget.skipped.append(entry.name)
            continue
        if entry.kind == "dir":
            (dest / entry.name).mkdir(parents=True, exist_ok=True)
        elif entry.kind == "link":
            links[entry.name] = entry.link
        else:
            out = dest / entry.name
            out.parent.mkdir(parents=True, exist_ok=True)
            with entry.open() as src:
                _copy(src, out, budget, entry.name)
            budget.files += 1
    _materialise_links(links, dest, budget.archive)
    budget.files += len(links)


def unwrap(root: Path) -> Path:
    """The dataset root inside an extracted archive: its only top-level folder, if it has exactly one."""
    children = list(root.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else root
