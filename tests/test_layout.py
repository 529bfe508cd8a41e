"""The layout is the design: one model core, a training pipeline and a tile pipeline over it,
Ray only at the edge. These tests read every import (function-level ones included) so that a
shortcut across the layers fails here rather than in a reader's head."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import REPO, concurrently

PACKAGE = REPO / "pix2pix"
# What a GPU machine may lack (bench/gpu_check.py runs the model core and the training step there).
HEAVY = ("albumentations", "cv2", "mercantile", "pyarrow", "ray")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (``from pix2pix import storage``
    counts as pix2pix.storage)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "pix2pix" or node.module.startswith("pix2pix."):
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(importer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {module: sorted(name for name in imported if any(within(name, bad) for bad in forbidden))
            for module, imported in MODULES.items() if within(module, importer)
            and any(within(name, bad) for name in imported for bad in forbidden)}


def test_the_layers_are_what_the_layout_says():
    assert {"pix2pix.model", "pix2pix.training", "pix2pix.tiles", "pix2pix.distributed"} <= set(MODULES)
    # The model core stands alone: it imports only itself and the project's error type.
    core = {module: sorted(name for name in imported if within(name, "pix2pix")
                           and not within(name, "pix2pix.model") and not within(name, "pix2pix.errors"))
            for module, imported in MODULES.items() if within(module, "pix2pix.model")}
    assert not any(core.values()), core
    # The two pipelines do not reach into each other, nor into Ray's edge.
    assert offenders("pix2pix.training", ("pix2pix.tiles", "pix2pix.distributed")) == {}
    assert offenders("pix2pix.tiles", ("pix2pix.training", "pix2pix.distributed")) == {}
    # Only pix2pix.distributed imports Ray; the library never imports the jobs.
    ray_users = {module for module, imported in MODULES.items() if any(within(name, "ray") for name in imported)}
    assert ray_users and all(within(module, "pix2pix.distributed") for module in ray_users), ray_users
    assert not any(within(name, "jobs") for imported in MODULES.values() for name in imported)


def test_no_two_modules_share_a_name():
    """``progress`` twice, ``train``/``trainer``/``training``: a reader cannot tell them apart."""
    stems = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            stems.setdefault(path.stem, []).append(str(path.relative_to(REPO)))
    assert {stem: paths for stem, paths in stems.items() if len(paths) > 1} == {}


def blocker(blocked: tuple[str, ...]) -> str:
    return f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(REPO)!r})
"""


BLOCKER = blocker(HEAVY)


CORE_IMPORTS = {
    "model core": "import " + ", ".join(sorted(name for name in MODULES if within(name, "pix2pix.model"))),
    "training step": "import pix2pix.training.step, pix2pix.training.budget",
    "bench/gpu_check.py": "import runpy; runpy.run_path('bench/gpu_check.py', run_name='gpu_check_imported')",
    "the generator stage's core": "import pix2pix.tiles.translator",
}
SCRIPTS = {  # name -> a script run with some libraries blocked
    **{name: BLOCKER + imports for name, imports in CORE_IMPORTS.items()},
    "planning": blocker(("torch", "cv2", "albumentations")) + "import pix2pix.distributed.translate_planning",
    "blocker": BLOCKER + "import pix2pix.tiles.plan",
    "io stages": blocker(("torch",)) + "import pix2pix.distributed.translate_stages",
}


def run_script(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """Every script of the tests below, run all at once (each is a Python start-up and its
    imports): name -> its run."""
    return dict(zip(SCRIPTS, concurrently(*(partial(run_script, script) for script in SCRIPTS.values()))))


@pytest.mark.parametrize("name", CORE_IMPORTS)
def test_the_model_core_and_the_training_step_need_none_of_the_pipeline_libraries(runs, name):
    completed = runs[name]
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_planning_tasks_import_no_model_or_image_libraries(runs):
    """Planning runs as Ray tasks, which may start in fresh worker processes: importing torch
    or OpenCV there cost seconds per task."""
    completed = runs["planning"]
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_the_read_and_write_actors_import_no_torch(runs):
    """They import the stages' module (as does the generator actor, which imports torch when it
    starts): torch's import costs each read or write actor seconds of CPU and hundreds of MB."""
    completed = runs["io stages"]
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_the_blocker_blocks(runs):
    """The check above can fail: a module of the tile pipeline needs a blocked library."""
    completed = runs["blocker"]
    assert completed.returncode != 0 and "blocked:" in completed.stderr
