"""The report from a small fake experiment directory: figures embedded, table = results, deterministic; W&B offline."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lightning_lottery.report import FIGURES, build_report, build_wandb_report, publish_wandb_report

EXPERIMENT_ID = "tiny_mlp-0123abcd"
# two prunable layers: fc1 (8 -> 16, 128 weights), fc2 (16 -> 3, 48 weights)
COSTS = {"net.fc1.weight": {"numel": 128, "macs_per_weight": 1}, "net.fc2.weight": {"numel": 48, "macs_per_weight": 1}}
ALIVE = {0: (128, 48), 1: (64, 36), 2: (32, 27)}  # per level, per layer
ACC = {("ticket", 0): (0.90, 0.92), ("ticket", 1): (0.93, 0.94), ("ticket", 2): (0.91, 0.95),
       ("random_reinit", 0): (0.90, 0.91), ("random_reinit", 1): (0.85, 0.88), ("random_reinit", 2): (0.70, 0.74)}


def _row(branch: str, replicate: int, level: int) -> dict:
    fc1, fc2 = ALIVE[level]
    acc = ACC[(branch, level)][replicate]
    stop = 400 - 100 * level + 100 * replicate + (0 if branch == "ticket" else 100)
    history = [{"step": s, "val_loss": 1.0 / (1 + s / 100) + (0.02 * (s - stop) / 100 if s > stop else 0.0),
                "val_acc": acc - 0.01} for s in range(100, 801, 100)]
    return {
        "branch": branch, "replicate": replicate, "level": level, "remaining": (fc1 + fc2) / 176, "alive": fc1 + fc2,
        "total": 176, "test_acc": acc, "test_loss": 1 - acc, "early_stop_iter": stop,
        "early_stop_test_acc": acc + 0.005, "min_val_loss": 0.3, "best_val_acc": acc, "steps": 800, "wall_s": 1.0,
        "layers": {"net.fc1.weight": {"alive": fc1, "total": 128, "remaining": fc1 / 128},
                   "net.fc2.weight": {"alive": fc2, "total": 48, "remaining": fc2 / 48}},
        "val_history": history,
    }


@pytest.fixture
def experiment(tmp_path) -> Path:
    root = tmp_path / "exp"
    root.mkdir()
    rows = [_row(b, r, lv) for b in ("ticket", "random_reinit") for r in (0, 1) for lv in (0, 1, 2)]
    config = {"model": {"class_path": "tests.conftest.TinyMLP", "init_args": {"lr": 0.1}},
              "data": {"class_path": "tests.conftest.TinyDataModule", "init_args": {"n": 96}},
              "lottery": {"levels": 2, "rate": 0.5, "scope": "layerwise"}}
    (root / "results.json").write_text(json.dumps(rows))
    (root / "experiment.json").write_text(json.dumps({"id": EXPERIMENT_ID, "hash": "ab" * 32, "config": config}))
    (root / "costs.json").write_text(json.dumps(COSTS))
    return root


class _Page(HTMLParser):
    """Collects the results table (header keys, cell data-value and text) and the embedded images."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []
        self.images: dict[str, bytes] = {}
        self.ids: set[str] = set()
        self._figure: str | None = None
        self._cell: list | None = None
        self._in_table = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table" and a.get("id") == "results":
            self._in_table = True
        elif self._in_table and tag == "th":
            self.keys.append(a["data-key"])
        elif self._in_table and tag == "tr" and self.keys:
            self.rows.append([])
        elif self._in_table and tag == "td":
            self._cell = [a["data-value"], ""]
        elif tag == "figure":
            self._figure = a["id"].removeprefix("fig-")
        elif tag == "img" and self._figure:
            prefix = "data:image/png;base64,"
            assert a["src"].startswith(prefix)
            self.images[self._figure] = base64.b64decode(a["src"][len(prefix):])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(tuple(self._cell))
            self._cell = None
        elif tag == "table":
            self._in_table = False
        elif tag == "figure":
            self._figure = None


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _mean(values):
    return sum(values) / len(values)


def test_report_embeds_figures_and_table_matches_results(experiment):
    html_path = build_report(experiment)
    assert html_path == experiment / "report" / "report.html"
    page = _parse(html_path)
    # every figure is embedded as a PNG, identical to the file written next to the report, and has an SVG there
    assert set(page.images) == set(FIGURES)
    for name, data in page.images.items():
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (html_path.parent / f"{name}.png").read_bytes() == data
        svg = (html_path.parent / f"{name}.svg").read_bytes()
        assert svg.startswith(b"<?xml") and b"<svg" in svg and b"<dc:date>" not in svg and b"Matplotlib v" not in svg
        assert f'<a href="{name}.svg">SVG</a>' in html_path.read_text()
    assert sorted(p.name for p in html_path.parent.iterdir()) == sorted(
        [*(f"{n}.{ext}" for n in FIGURES for ext in ("png", "svg")), "aggregate.csv", "report.html", "summary.csv"])
    assert "src=\"http" not in html_path.read_text() and "<link" not in html_path.read_text()
    # header: id, (dataset, architecture, metric) triple, collapsible configuration
    assert {"experiment-id", "dataset", "architecture", "metric", "config"} <= page.ids
    text = html_path.read_text()
    assert EXPERIMENT_ID in text and ">TinyMLP<" in text and ">Tiny<" in text and "<details" in text
    assert "rate: 0.5" in text  # the YAML configuration

    assert page.keys == ["branch", "level", "n", "remaining", "compression", "speedup", "test_acc",
                         "early_stop_iter", "early_stop_test_acc"]
    rows = json.loads((experiment / "results.json").read_text())
    table = [dict(zip(page.keys, cells)) for cells in page.rows]
    assert [(t["branch"][0], t["level"][0]) for t in table] == [
        ("ticket", "0"), ("ticket", "1"), ("ticket", "2"), ("random_reinit", "0"), ("random_reinit", "1"),
        ("random_reinit", "2")]
    for entry in table:
        branch, level = entry["branch"][0], int(entry["level"][0])
        group = [r for r in rows if r["branch"] == branch and r["level"] == level]
        assert int(entry["n"][0]) == len(group) == 2
        fc1, fc2 = ALIVE[level]
        expected = {
            "remaining": _mean([r["remaining"] for r in group]),
            "compression": 176 / (fc1 + fc2),
            "speedup": 176 / (fc1 + fc2),  # all MACs per weight are 1 here
            "test_acc": _mean([r["test_acc"] for r in group]),
            "early_stop_iter": _mean([r["early_stop_iter"] for r in group]),
            "early_stop_test_acc": _mean([r["early_stop_test_acc"] for r in group]),
        }
        for key, value in expected.items():
            assert float(entry[key][0]) == pytest.approx(value, rel=1e-12), (branch, level, key)
        # what is shown: percentages with 2 decimals, ± the 95% CI
        assert entry["test_acc"][1].startswith(f"{100 * expected['test_acc']:.2f} ± ")
        assert entry["remaining"][1] == f"{100 * expected['remaining']:.2f}"
        assert entry["speedup"][1] == f"{expected['speedup']:.2f}"
    # the table is also written as CSV at full precision
    summary = (html_path.parent / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("branch,level,n,remaining,compression,speedup,test_acc")
    assert len(summary) == 7 and (html_path.parent / "aggregate.csv").is_file()


def test_regenerating_from_a_copy_is_identical(experiment, tmp_path):
    first = build_report(experiment, tmp_path / "out1")
    copy = tmp_path / "elsewhere" / "copied_experiment"
    shutil.copytree(experiment, copy)
    second = build_report(copy)
    assert first.read_bytes() == second.read_bytes()  # the whole HTML, table included
    for name in FIGURES:
        for ext in ("png", "svg"):
            assert (first.parent / f"{name}.{ext}").read_bytes() == (second.parent / f"{name}.{ext}").read_bytes()
    assert (first.parent / "summary.csv").read_bytes() == (second.parent / "summary.csv").read_bytes()


def test_without_costs_the_speedup_column_is_omitted(experiment):
    (experiment / "costs.json").unlink()
    page = _parse(build_report(experiment))
    assert "speedup" not in page.keys and "compression" in page.keys
    assert "no costs.json" in (experiment / "report" / "report.html").read_text()


def test_wandb_report_built_offline(experiment, monkeypatch):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(wr.Report, "save", lambda *a, **k: pytest.fail("the report must not be saved"))
    report = build_wandb_report(experiment, project="p")
    assert isinstance(report, wr.Report) and report.project == "p" and EXPERIMENT_ID in report.title
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 2  # curves grouped by branch; (branch, level) groups (tests/test_wandb_report.py: more)
    for grid in grids:
        [runset] = grid.runsets
        assert runset.project == "p" and EXPERIMENT_ID in runset.filters and "Group" in runset.filters
        assert "config:level.value" in runset.pinned_columns and "summary:test_acc" in runset.visible_columns
    assert [g.runsets[0].groupby for g in grids] == [["config.branch"], ["config.branch", "config.level"]]
    curves = [p for p in grids[0].panels if isinstance(p, wr.LinePlot)]
    assert {tuple(p.y) for p in curves} == {("lottery/test_acc",), ("lottery/early_stop_test_acc",),
                                           ("lottery/early_stop_iter",)}
    assert all(p.x == "lottery/remaining_pct" and p.log_x and p.groupby_rangefunc == "stderr" for p in curves)
    assert ("val_loss",) in {tuple(p.y) for p in grids[1].panels if isinstance(p, wr.LinePlot)}
    markdown = [b.text for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert any("| ticket | 2 | 2 |" in text for text in markdown)  # the aggregated table, from the directory
    # the whole spec serialises without any network access
    spec = json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
    assert spec["displayName"] == report.title
    assert any(b["type"] == "panel-grid" for b in spec["spec"]["blocks"])


@pytest.mark.parametrize("mode", ["offline", None])
def test_publish_without_login_raises_one_line(experiment, monkeypatch, tmp_path, mode):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    import wandb

    if mode:
        monkeypatch.setenv("WANDB_MODE", mode)
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setattr(wr.Report, "save", lambda *a, **k: pytest.fail("no save without login"))
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("no network without login"))
    with pytest.raises(RuntimeError) as err:
        publish_wandb_report(experiment, project="p")
    message = str(err.value)
    assert "\n" not in message and "cannot publish the W&B report" in message
    assert ("offline" in message) if mode else ("offline" in message or "not logged in" in message)


@pytest.fixture
def weights_rewind_experiment(tmp_path) -> Path:
    """``lottery.rewind: weights`` (main line ``weights_rewind``) with a ``random_mask`` control at levels ≥ 1; the
    control's per-layer counts differ, so the per-layer figure shows which branch it is about."""
    root = tmp_path / "wr_exp"
    root.mkdir()
    alive = {"weights_rewind": {0: 100, 1: 50, 2: 25}, "random_mask": {1: 80, 2: 64}}
    rows = [{"branch": branch, "replicate": 0, "level": level, "remaining": n / 100, "alive": n, "total": 100,
             "test_acc": 0.9 - 0.05 * level - (0.1 if branch == "random_mask" else 0.0),
             "layers": {"fc.weight": {"alive": n, "total": 100, "remaining": n / 100}}}
            for branch, levels in alive.items() for level, n in levels.items()]
    config = {"model": {"class_path": "tests.conftest.TinyMLP"}, "data": {"class_path": "tests.conftest.TinyDataModule"},
              "lottery": {"levels": 2, "rewind": "weights", "controls": ["random_mask"]}}
    (root / "experiment.json").write_text(json.dumps({"id": "wr-0123abcd", "hash": "cd" * 32, "config": config}))
    (root / "results.json").write_text(json.dumps(rows))
    return root


def test_the_main_branch_is_the_main_line_of_lottery_rewind(weights_rewind_experiment, monkeypatch):
    from lightning_lottery.report import figures, load_experiment
    from lightning_lottery.report.record import main_branch

    record = load_experiment(weights_rewind_experiment)
    assert main_branch(record) == "weights_rewind"
    # the configured rewind mode decides, also when another main line's rows are present
    assert main_branch(replace(record, rows=[*record.rows, {"branch": "ticket", "level": 0}])) == "weights_rewind"

    plotted = []
    original = figures._plot_layers

    def spy(rows, branch, title):
        fig = original(rows, branch, title)
        plotted.append((branch, fig))
        return fig

    monkeypatch.setattr(figures, "_plot_layers", spy)
    html_path = build_report(weights_rewind_experiment)
    [(branch, fig)] = plotted
    assert branch == "weights_rewind"
    [ax] = fig.axes
    assert ax.get_title() == "Weights remaining per layer (weights_rewind)"
    [layer] = [line for line in ax.get_lines() if line.get_label() == "fc.weight"]
    assert list(layer.get_xdata()) == [0, 1, 2] and list(layer.get_ydata()) == [100.0, 50.0, 25.0]
    # the checklist counts the main line's operating points (3), not the control's (2)
    assert "trade-off curve with 3 operating points" in html_path.read_text()


def test_wandb_report_names_the_main_line(weights_rewind_experiment, monkeypatch):
    pytest.importorskip("wandb_workspaces.reports.v2")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    report = build_wandb_report(weights_rewind_experiment, project="p")
    spec = json.loads(report._to_model().model_dump_json(by_alias=True, exclude_none=True))
    markdown = [b["content"] for b in spec["spec"]["blocks"] if b["type"] == "markdown-block"]
    assert any("Sparsest weights_rewind: 25% of weights remaining, test accuracy 80.00%." in m for m in markdown)
    assert not any("Sparsest random_mask" in m for m in markdown)


def test_the_verdict_opens_the_page(experiment):
    text = build_report(experiment).read_text()
    assert "verdict" in _parse(experiment / "report" / "report.html").ids
    start = text.index('<section id="verdict"')
    assert start < text.index('<details id="config"') < text.index('<table id="results"')
    verdict = text[start:text.index("</section>", start)]
    # ticket 2 levels: 92.5% (level 1), 93% (level 2) vs dense 91% ± CI; random_reinit at level 2: 72%
    assert "Winning ticket: ticket at level 2" in verdict and "mean ≥ dense mean − the dense 95% CI" in verdict
    assert "random_reinit falls 21.0 pp below the ticket" in verdict and "Not run: random_mask." in verdict
    assert ("It learns faster: early stop at 250 ± 635 vs 450 ± 635 for the dense network (training budget 800 it); "
            "the 95% CIs overlap." in verdict)


def _many_levels_rows(levels: int = 15, reps: int = 3, steps: int = 3000) -> list[dict]:
    """A synthetic experiment: ``levels`` levels of 20% pruning, a ticket and two controls, ``reps`` replicates."""
    rows = []
    for branch in ("ticket", "random_reinit", "random_mask"):
        for rep in range(reps):
            for level in range(0 if branch == "ticket" else 1, levels):
                gap = 0.0 if branch == "ticket" else 0.004 * level
                stop = min(steps, 2800 - 100 * level + 100 * rep if branch == "ticket" else 2900 + 50 * rep)
                history = [{"step": s, "val_loss": 0.3 + 0.5 / (1 + s / 300) + gap + 1e-5 * max(0, s - stop)}
                           for s in range(100, steps + 1, 100)]
                rows.append({"branch": branch, "replicate": rep, "level": level, "remaining": 0.8 ** level,
                             "alive": round(10_000 * 0.8 ** level), "total": 10_000, "steps": steps,
                             "test_acc": 0.87 + 0.001 * rep - gap, "early_stop_iter": stop,
                             "early_stop_test_acc": 0.871 - gap, "val_history": history})
    return rows


@pytest.fixture
def many_levels(tmp_path) -> Path:
    root = tmp_path / "exp15"
    root.mkdir()
    (root / "results.json").write_text(json.dumps(_many_levels_rows()))
    return root


def test_figures_stay_readable_with_15_levels(many_levels, monkeypatch):
    from lightning_lottery.report import figures

    made = {}
    for name in ("_plot_accuracy", "_plot_early_stop", "_plot_val_loss"):
        def spy(*args, _original=getattr(figures, name), _name=name):
            made[_name] = fig = _original(*args)
            return fig
        monkeypatch.setattr(figures, name, spy)
    html_path = build_report(many_levels)
    measured = sorted({round(100 * 0.8 ** lv, 6) for lv in range(15)})

    # accuracy and early stop: a tick at every measured level, labels readable (first and last included, apart)
    for ax in [*made["_plot_accuracy"].axes, *made["_plot_early_stop"].axes]:
        major, minor = list(ax.xaxis.get_majorticklocs()), list(ax.xaxis.get_minorticklocs())
        assert sorted(round(t, 6) for t in major + minor) == measured
        assert max(major) == 100 and min(major) == measured[0] and 5 <= len(major) <= 12
    # early stop: the axis starts at 0 and marks the training budget
    [ax] = made["_plot_early_stop"].axes
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 3000
    [budget] = [line for line in ax.get_lines() if line.get_label() == "training budget (3000 it)"]
    assert list(budget.get_ydata()) == [3000, 3000] and budget.get_linestyle() == "--"

    # validation curves: 6 evenly spaced levels of 15 per panel (0 and 14 included), said in the legend and caption
    fig = made["_plot_val_loss"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{b} (mean of 3 replicates)"
                                                 for b in ("ticket", "random_mask", "random_reinit")]
    assert all(len([ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]) <= 6 for ax in panels)
    [legend] = fig.legends
    assert legend.get_title().get_text().endswith("6 of 15 levels shown, evenly spaced")
    assert [t.get_text().split()[0] for t in legend.get_texts()] == ["0", "3", "6", "8", "11", "14"]
    assert "6 of the 15 levels are shown (evenly spaced: 0, 3, 6, 8, 11, 14)" in html_path.read_text()
    assert "the training budget (3000 iterations)" in html_path.read_text()
    for name in FIGURES:
        assert (html_path.parent / f"{name}.svg").is_file() == (name != "layers")  # no per-layer counts here
