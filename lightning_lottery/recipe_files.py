"""Where a recipe comes from: the recipes packaged with lightning-lottery (by name), or the recipe an experiment
recorded in its ``experiment.json`` (``find --resume DIR``).

Example:
    >>> from lightning_lottery.recipe_files import packaged_recipes, recipe_summary
    >>> "lenet300_digits_smoke" in packaged_recipes()
    True
    >>> recipe_summary(packaged_recipes()["lenet300_digits_smoke"]).startswith("smoke test")
    True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["packaged_recipes", "recipe_listing", "recipe_summary", "recorded_recipe", "resolve_recipes"]


def packaged_recipes() -> dict[str, Path]:
    """The recipes shipped with the package (``lightning_lottery.recipes``), by name."""
    from importlib.resources import files

    folder = files("lightning_lottery.recipes")
    return {Path(str(p)).stem: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def recipe_listing() -> str:
    """One line per packaged recipe: its name, then what it reproduces, its data and its expected time."""
    found = packaged_recipes()
    width = max(len(name) for name in found)
    return "\n".join(f"{name:<{width}}  {recipe_summary(path)}" for name, path in found.items())


def recipe_summary(path: Path) -> str:
    """A recipe's ``# recipe:`` comment line (what it reproduces, its data, its expected time)."""
    for line in path.read_text().splitlines():
        if line.startswith("# recipe:"):
            return line[len("# recipe:"):].strip()
    return ""


def recorded_recipe(experiment_file: Path) -> Path:
    """The resolved recipe recorded in an ``experiment.json``, as a YAML file to parse again."""
    import tempfile

    import yaml

    from lightning_lottery.store import read_json

    config = dict(read_json(experiment_file).get("config") or {})
    if not config:
        raise FileNotFoundError(f"{experiment_file} records no configuration")
    config.pop("resume", None)
    fd, name = tempfile.mkstemp(prefix="lightning-lottery-recipe-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return Path(name)


def resolve_recipes(argv: list[str]) -> list[str]:
    """``--config NAME`` (or ``-c NAME``) names a packaged recipe when NAME is not a file; ``--config
    DIR/experiment.json`` and ``--resume DIR`` read the recipe an experiment recorded."""
    out = list(argv)
    if "--resume" in out[:-1]:
        at = out.index("--resume")
        directory = Path(out[at + 1])
        out[at:at + 2] = ["--config", str(recorded_recipe(directory / "experiment.json")),
                          "--lottery.out_dir", str(directory)]
    for i, arg in enumerate(out):
        value, prefix = None, ""
        if arg in ("--config", "-c") and i + 1 < len(out):
            value, at = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, at, prefix = arg.split("=", 1)[1], i, "--config="
        if value is not None and value.endswith(".json") and Path(value).is_file():
            out[at] = prefix + str(recorded_recipe(Path(value)))
            continue
        if value is None or Path(value).exists():
            continue
        recipe = packaged_recipes().get(value[:-5] if value.endswith(".yaml") else value)
        if recipe is not None:
            out[at] = prefix + str(recipe)
    return out
