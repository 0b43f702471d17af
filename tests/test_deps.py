"""dvc.yaml's code deps, and the resume fingerprint's code list, cover the code each stage really loads.

A stage whose deps miss a module it imports is not rerun when that module changes: its outputs go
stale silently. The import closure of each stage script is found with ``ast`` alone (no torch or
Ultralytics import, so this runs in well under a second): every ``import`` and ``from ... import``,
function-level ones included, resolved against ``stages/`` (stage-local modules such as ``_cli``)
and ``src/`` (``stagetrain.*``). Importing ``a.b.c`` loads ``a/__init__.py`` and ``a/b/__init__.py``
too, and ``from a.b import c`` loads ``a/b/c.py`` when ``c`` is a submodule. Imports under
``if TYPE_CHECKING:`` load nothing at run time and are left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Where a stage script's imports are looked up, in sys.path order: the script's own folder, then src/.
CODE_ROOTS = ("stages", "src")
SCRIPT_IN_CMD = re.compile(r"(?<![\w/.-])(stages/[\w/-]+\.py)\b")
FINGERPRINT_MODULE = "src/stagetrain/train/resume.py"
FINGERPRINT_BASE = "src/stagetrain"  # resume.PACKAGE_DIR: the code list's entries are relative to it
TRAINER_SCRIPT = "stages/train.py"


# --- import closure -------------------------------------------------------------------------------


def _resolve(root: Path, dotted: str) -> str | None:
    """Repo-relative file that ``import <dotted>`` runs (a package's ``__init__.py``), or None if not ours."""
    parts = dotted.split(".")
    for code_root in CODE_ROOTS:
        base = root / code_root / Path(*parts)
        if (base / "__init__.py").is_file():
            return f"{code_root}/{'/'.join(parts)}/__init__.py"
        if base.with_suffix(".py").is_file():
            return f"{code_root}/{'/'.join(parts)}.py"
    return None


def _loaded_modules(dotted: str) -> Iterator[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module imports every package above it."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def _module_name(rel: str) -> tuple[str, bool]:
    """Dotted name of a repo-relative file and whether it is a package (``__init__.py``)."""
    path = Path(rel)
    code_root = next(r for r in CODE_ROOTS if path.parts[0] == r)
    parts = list(path.relative_to(code_root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names a module's code may import: top-level and function-level, relative ones made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _loaded_modules(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base:
                yield from _loaded_modules(base)
            for alias in node.names:
                if alias.name != "*":
                    yield f"{base}.{alias.name}" if base else alias.name  # a submodule, when it is one
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            yield from _loaded_modules(node.args[0].value)


def import_closure(script: str, root: Path = REPO) -> dict[str, list[str]]:
    """Every file of ours that running ``script`` loads, each with the import chain that reaches it."""
    chains = {script: [script]}
    todo = [script]
    while todo:
        current = todo.pop()
        module, is_package = _module_name(current)
        tree = ast.parse((root / current).read_text(), filename=current)
        for name in _imported_names(tree, module, is_package):
            target = _resolve(root, name)
            if target and target not in chains:
                chains[target] = [*chains[current], target]
                todo.append(target)
    return chains


# --- dvc.yaml -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    script: str | None
    deps: tuple[str, ...]


def read_stages(dvc_yaml: Path) -> list[Stage]:
    """Each stage of dvc.yaml (a foreach/matrix stage once: its template), with its script and deps."""
    stages = []
    for name, spec in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        body = spec.get("do", spec)
        cmd = body.get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        scripts = SCRIPT_IN_CMD.findall(cmd)
        deps = tuple(d.strip().removeprefix("./").rstrip("/") for d in body.get("deps", []) or [])
        stages.append(Stage(name, scripts[0] if scripts else None, deps))
    return stages


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep + "/")


def is_code(path: str) -> bool:
    return path.split("/", 1)[0] in CODE_ROOTS and "${" not in path


def _package_files(root: Path, folder: str) -> set[str]:
    return {f.relative_to(root).as_posix() for f in (root / folder).rglob("*.py") if "__pycache__" not in f.parts}


def missing_deps(stage: Stage, root: Path = REPO) -> list[str]:
    """One message per file the stage's script loads that none of its deps covers.

    A subpackage (not ``src/<pkg>`` itself) whose every file is loaded and uncovered gets one message
    that asks for the folder: that is where a folder dep is the narrow one.
    """
    if stage.script is None:
        return [f"stage {stage.name}: its cmd names no stages/<x>.py, so this check cannot see its code"]
    closure = import_closure(stage.script, root)
    missing = {file: chain for file, chain in sorted(closure.items()) if not any(covers(dep, file) for dep in stage.deps)}
    messages = []
    for folder in sorted({str(Path(f).parent.as_posix()) for f in missing if f.endswith("/__init__.py")}):
        if len(Path(folder).parts) > 2 and _package_files(root, folder) <= missing.keys():
            files = _package_files(root, folder)
            messages.append(
                f"stage {stage.name} loads all {len(files)} files of {folder} (import chain: "
                f"{' -> '.join(missing[folder + '/__init__.py'])}) but does not depend on them: "
                f"add `{folder}` to the deps of stage {stage.name} in dvc.yaml"
            )
            missing = {f: c for f, c in missing.items() if f not in files}
    messages += [
        f"stage {stage.name} loads {file} (import chain: {' -> '.join(chain)}) but does not depend on it: "
        f"add `{file}` to the deps of stage {stage.name} in dvc.yaml"
        for file, chain in missing.items()
    ]
    return messages


STAGES = read_stages(REPO / "dvc.yaml")


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_stage_deps_cover_its_imports(stage):
    missing = missing_deps(stage)
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_stage_code_deps_exist_and_are_loaded(stage):
    """A code dep that is gone makes DVC refuse the stage; one the stage never loads reruns it for nothing."""
    loaded = import_closure(stage.script) if stage.script else {}
    problems = []
    for dep in filter(is_code, stage.deps):
        path = REPO / dep
        if not path.exists():
            problems.append(f"stage {stage.name} depends on {dep}, which does not exist (renamed?): fix or remove it in dvc.yaml")
        elif path.is_dir():
            unused = sorted(
                rel for f in path.rglob("*.py") if "__pycache__" not in f.parts and (rel := f.relative_to(REPO).as_posix()) not in loaded
            )
            if unused:
                problems.append(
                    f"stage {stage.name} depends on the folder {dep} but never loads {', '.join(unused)}: "
                    "list the files it loads in dvc.yaml instead of the folder"
                )
        elif dep not in loaded:
            problems.append(f"stage {stage.name} depends on {dep} but never imports it: remove it from the deps in dvc.yaml")
    assert not problems, "\n".join(problems)


# --- resume fingerprint ---------------------------------------------------------------------------


def fingerprint_code_list(resume_py: Path) -> tuple[str, ...]:
    """The code files ``resume.fingerprint`` hashes: the string tuple/list its ``"code"`` entry iterates."""
    tree = ast.parse(resume_py.read_text())
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    function = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fingerprint"), None)
    assert function is not None, f"{FINGERPRINT_MODULE} has no function `fingerprint` any more: update tests/test_deps.py"
    code_entry = next(
        (
            value
            for node in ast.walk(function)
            if isinstance(node, ast.Dict)
            for key, value in zip(node.keys, node.values)
            if isinstance(key, ast.Constant) and key.value == "code"
        ),
        None,
    )
    assert code_entry is not None, f'`fingerprint` in {FINGERPRINT_MODULE} hashes no `"code"` entry any more: update tests/test_deps.py'
    for node in ast.walk(code_entry):
        literal = constants.get(node.id) if isinstance(node, ast.Name) else node
        if isinstance(literal, (ast.Tuple, ast.List)) and literal.elts and all(isinstance(e, ast.Constant) for e in literal.elts):
            return tuple(ast.literal_eval(literal))
    raise AssertionError(f"cannot find the list of code files `fingerprint` hashes in {FINGERPRINT_MODULE}: update tests/test_deps.py")


def test_resume_fingerprint_covers_the_trainer_code():
    """A resumed run must never continue under other code: the fingerprint hashes everything the trainer loads."""
    entries = fingerprint_code_list(REPO / FINGERPRINT_MODULE)
    listed = [f"{FINGERPRINT_BASE}/{e.rstrip('/')}" for e in entries]
    gone = [e for e, path in zip(entries, listed) if not (REPO / path).exists()]
    assert not gone, f"the code list in `fingerprint` ({FINGERPRINT_MODULE}) names {gone}, which do not exist: fingerprint() would fail"
    missing = [
        f"the trainer loads {file} (import chain: {' -> '.join(chain)}), but the resume fingerprint does not hash it: "
        f"add {file.removeprefix(FINGERPRINT_BASE + '/')!r} to the code list in `fingerprint` ({FINGERPRINT_MODULE})"
        for file, chain in sorted(import_closure(TRAINER_SCRIPT).items())
        if file.startswith(FINGERPRINT_BASE + "/") and not any(covers(path, file) for path in listed)
    ]
    assert not missing, "\n".join(missing)


# --- the check itself -----------------------------------------------------------------------------


def test_closure_follows_every_kind_of_import(tmp_path):
    """Function-level imports, package __init__s, `from pkg import submodule`, relative and stage-local imports."""
    files = {
        "stages/go.py": "import _cli\n\ndef work():\n    from stagetrain.pkg import sub\n",
        "stages/_cli.py": "import os\nimport stagetrain.top\n",
        "src/stagetrain/__init__.py": "",
        "src/stagetrain/top.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stagetrain import typed_only\n",
        "src/stagetrain/typed_only.py": "",
        "src/stagetrain/pkg/__init__.py": "",
        "src/stagetrain/pkg/sub.py": "from . import sibling\nfrom ..top import x\n",
        "src/stagetrain/pkg/sibling.py": "",
        "src/stagetrain/pkg/unused.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    closure = import_closure("stages/go.py", tmp_path)
    assert set(closure) == {
        "stages/go.py",
        "stages/_cli.py",
        "src/stagetrain/__init__.py",
        "src/stagetrain/top.py",
        "src/stagetrain/pkg/__init__.py",
        "src/stagetrain/pkg/sub.py",
        "src/stagetrain/pkg/sibling.py",
    }
    assert closure["src/stagetrain/pkg/sibling.py"] == ["stages/go.py", "src/stagetrain/pkg/sub.py", "src/stagetrain/pkg/sibling.py"]


def _drop_dep_line(dvc_text: str, stage: str, dep: str) -> str:
    """dvc.yaml's text without the line `- <dep>` inside the block of `stage` (a top-level stage key)."""
    lines = dvc_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == f"  {stage}:")
    for i in range(start + 1, len(lines)):
        if re.match(r"  \S", lines[i]):
            break  # the next stage's block
        if lines[i].split("#")[0].strip() == f"- {dep}":
            return "".join(lines[:i] + lines[i + 1 :])
    raise AssertionError(f"no line `- {dep}` in the block of stage {stage}")


def test_removing_a_dep_line_fails_the_check(tmp_path):
    """The issue's proof that the check bites: drop one needed dep line from a copy of dvc.yaml."""
    stage = next(s for s in STAGES if s.name == "export")
    needed = import_closure(stage.script)
    dep = next(d for d in stage.deps if d in needed and d != stage.script and not any(covers(o, d) for o in stage.deps if o != d))
    copy = tmp_path / "dvc.yaml"
    copy.write_text(_drop_dep_line((REPO / "dvc.yaml").read_text(), stage.name, dep))
    broken = next(s for s in read_stages(copy) if s.name == stage.name)
    assert dep not in broken.deps
    messages = missing_deps(broken)
    assert any(f"add `{dep}` to the deps of stage {stage.name} in dvc.yaml" in m for m in messages), messages
