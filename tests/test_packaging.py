"""A pip user without a clone: the wheel ships the recipes, the console script runs one by name from an empty folder.

The wheel is built from the checkout and installed into a fresh virtual environment outside it. Its dependencies
(torch and the rest, several GB) are taken from the test's own environment through a ``.pth`` file instead of
being installed again: what is tested is the wheel's own content and entry point, not pip's resolver.
"""

from __future__ import annotations

import csv
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its ``bin`` folder."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(base / "dist")], check=True, capture_output=True, timeout=300, env=_clean_env())
    (wheel,) = (base / "dist").glob("lightning_lottery-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    (purelib,) = env_dir.glob("lib/python*/site-packages")
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300, env=_clean_env())
    return env_dir / "bin"


def _clean_env() -> dict[str, str]:
    """The test's environment without what would point the fresh venv back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["WANDB_MODE"] = "offline"
    return env


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = _clean_env()
    return subprocess.run([str(bin_dir / "lightning-lottery"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_is_what_runs(installed, tmp_path):
    probe = subprocess.run([str(installed / "python"), "-c", "import lightning_lottery; print(lightning_lottery.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env=_clean_env())
    assert str(ROOT) not in probe.stdout and "site-packages" in probe.stdout


def test_version_and_recipes_listing(installed, tmp_path):
    version = _run(installed, tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "lightning-lottery 0.1.0"
    listing = _run(installed, tmp_path, "recipes")
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert names == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert all("|" in line for line in listing.stdout.splitlines())  # what it reproduces | data | time


def test_a_packaged_recipe_runs_by_name_from_an_empty_folder(installed, tmp_path):
    proc = _run(installed, tmp_path, "find", "-c", "lenet300_digits_smoke", "--lottery.levels", "1",
                "--trainer.max_steps", "20", "--lottery.val_every_n_steps", "10", "--wandb.enabled", "false",
                "--quiet", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "experiments" / "lenet300_digits_smoke" / "results.csv")))
    assert [r["level"] for r in rows] == ["0", "1"]
    assert (tmp_path / "experiments" / "lenet300_digits_smoke" / "report" / "report.html").is_file()


def test_typed_package_and_license_are_shipped(installed):
    (purelib,) = installed.parent.glob("lib/python*/site-packages")
    assert (purelib / "lightning_lottery" / "py.typed").is_file()
    (dist_info,) = purelib.glob("lightning_lottery-*.dist-info")
    assert "Apache License" in next(dist_info.rglob("LICENSE")).read_text()
    metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata and "Classifier: Typing :: Typed" in metadata


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject.toml lists the packages by hand (the recipes are mapped from recipes/): none may be forgotten."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lightning_lottery").rglob("__init__.py")}
    assert listed == found | {"lightning_lottery.recipes"}


def test_version_and_recipes_answer_without_importing_lightning(installed, tmp_path):
    """The console script's fast path: `--version` and `recipes` import no Lightning (several seconds)."""
    probe = ("import sys; from lightning_lottery.console import main; main(['recipes']); main(['--version']); "
             "print('lightning' in sys.modules or 'lightning.pytorch' in sys.modules)")
    out = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env=_clean_env()).stdout.strip().splitlines()
    assert out[-1] == "False" and out[-2] == "lightning-lottery 0.1.0"
