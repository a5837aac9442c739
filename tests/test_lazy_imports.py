"""What a command imports: nothing it does not use (issue 18). Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Loaded only by the commands that need them (report, W&B, export to ONNX, data sets that use them).
HEAVY = ("wandb", "matplotlib", "onnx", "sklearn", "torchvision", "wandb_workspaces", "lightning_lottery.report")


def _modules_added(setup: str, code: str) -> list[str]:
    """The top-level names (and ``lightning_lottery.report``) that ``code`` adds to ``sys.modules`` after ``setup``."""
    script = (f"import sys, json\n{setup}\nbefore = set(sys.modules)\n{code}\n"
              "print(json.dumps(sorted(set(sys.modules) - before)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _heavy(names: list[str]) -> list[str]:
    return sorted(n for n in names if n in HEAVY or n.split(".")[0] in HEAVY[:-1])


def test_the_package_imports_neither_torch_nor_lightning():
    added = _modules_added("", "import lightning_lottery")
    assert not [n for n in added if n.split(".")[0] in ("torch", "lightning", "wandb", "matplotlib")]


def test_find_and_the_scheduler_import_nothing_heavy_beyond_lightning():
    # Lightning itself may load matplotlib and torchvision (through torchmetrics): that is everyone's cost
    added = _modules_added("import lightning.pytorch",
                           "import lightning_lottery.cli, lightning_lottery.scheduler, lightning_lottery.models, "
                           "lightning_lottery.data")
    assert _heavy(added) == []


def test_the_console_answers_version_without_lightning():
    added = _modules_added("", "from lightning_lottery.console import main\nmain(['--version'])")
    assert not [n for n in added if n.split(".")[0] in ("torch", "lightning")]


def test_the_console_imports_without_the_collector_then_turns_it_back_on(tmp_path):
    """The imports' objects are frozen (no full collection walks them again) and collection is on for the command."""
    code = ("import gc\nfrom lightning_lottery.console import main\ntry:\n    main(['report', "
            f"{str(tmp_path / 'none')!r}])\nexcept SystemExit:\n    pass\n"
            "import torch\nprint(gc.isenabled(), gc.get_freeze_count() > 100000)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert done.stdout.split() == ["True", "True"]
