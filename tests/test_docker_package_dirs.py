"""docker/package_dirs.py (issue 25): the Docker builds install the dependencies over empty
package folders made from pyproject.toml's list; a folder it got wrong fails the build."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "package_dirs.py"


def load():
    spec = importlib.util.spec_from_file_location("package_dirs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_listed_package_maps_to_its_folder_in_the_tree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = load().package_dirs(pyproject)
    assert len(folders) == len(pyproject["tool"]["setuptools"]["packages"])
    for folder in folders:
        assert (ROOT / folder / "__init__.py").is_file(), folder
    assert "server/index/milvus" in folders


def test_the_longest_mapped_prefix_wins_and_unmapped_names_sit_at_their_path():
    pyproject = {
        "tool": {
            "setuptools": {
                "package-dir": {"a": "src_a", "a.b": "elsewhere"},
                "packages": ["a", "a.c", "a.b.d", "plain.pkg"],
            }
        }
    }
    assert load().package_dirs(pyproject) == ["src_a", "src_a/c", "elsewhere/d", "plain/pkg"]


def test_run_as_the_build_does_it_makes_the_folders(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml")], cwd=tmp_path, check=True
    )
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_dir())
    assert "server/index/milvus" in made and "proto/v1" in made
