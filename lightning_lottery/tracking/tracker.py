"""``WandbTracker``: one W&B run per run of the experiment, its lineage, and the summary run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_lottery.store_format import file_sha256
from lightning_lottery.tracking.artifacts import use_artifact
from lightning_lottery.tracking.runs import (
    mask_artifact_name,
    rewind_artifact_name,
    run_id,
    run_name,
    summary_values,
    ticket_artifact_name,
)
from lightning_lottery.tracking.settings import WandbSettings
from lightning_lottery.tracking.summary import (
    STABILITY_COLUMNS,
    aggregate_table,
    ci_chart,
    mask_overlap_by_level,
    stability_chart,
    stability_table,
)

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger

    from lightning_lottery.plan import Run
    from lightning_lottery.store import ExperimentStore, LevelInfo




class WandbTracker:
    """Starts each run's W&B run (with the artifacts it uses) and closes it with summary values and artifacts.

    Lineage: a main-line run at level L ≥ 1 and every control at level L *use* the replicate's rewind point
    (``lottery-rewind-point``, logged by the main line's level-0 run; with ``rewind_to: auto`` its copy θk at the
    chosen step, a stability run at one of several steps θk of its step) and the main line's mask of level L
    (``lottery-mask``, logged by the main line's run at L−1, which pruned it); each run *logs* its ticket
    (``lottery-ticket``), the main line's runs the mask they pruned for the next level and level 0 the rewind point
    (and every θk copy of ``stability.at``, each under its own name), controls with a mask of their own
    (``random_mask``, ``oneshot``) that mask. Artifact names are deterministic (:func:`ticket_artifact_name`,
    :func:`mask_artifact_name`, :func:`rewind_artifact_name`); a used artifact is built from the same file as the
    one logged, so it has the same digest and W&B resolves it to that version. Offline, ``wandb.Run.use_artifact``
    refuses everything (wandb 0.31: ``TypeError: Cannot use artifact when in offline mode``); :func:`use_artifact`
    then writes the record ``use_artifact`` itself writes for a local artifact online (``user_created``,
    ``use_after_commit``), which ``wandb sync`` replays as a use.

    Args:
        settings: the ``wandb:`` settings.
        experiment_id: the experiment's id (the W&B group).
        experiment_hash: the configuration hash (artifact metadata).
        config: the resolved recipe (the run config).
        out_dir: the experiment directory (default place of W&B's files).
        store: the experiment's store (paths of masks and the rewind point; default: one on ``out_dir``).
        main_branch: the experiment's main line (whose masks the other runs use).
    """

    def __init__(self, settings: WandbSettings, experiment_id: str, experiment_hash: str,
                 config: Mapping[str, Any], out_dir: str | os.PathLike, store: ExperimentStore | None = None,
                 main_branch: str = "ticket") -> None:
        from lightning_lottery.store import ExperimentStore

        self.settings = settings
        self.experiment_id = experiment_id
        self.experiment_hash = experiment_hash
        self.config = dict(config)
        self.store = store if store is not None else ExperimentStore(out_dir)
        self.main_branch = main_branch
        self.dir = Path(settings.dir) if settings.dir else Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")  # our progress lines say where runs go
        import multiprocessing

        if multiprocessing.parent_process() is None:
            # a W&B service inherited from whatever launched this process (not our spawned workers) would still
            # hold the run ids of a killed earlier attempt: start our own, so a resumed run can take its id again
            os.environ.pop("WANDB_SERVICE", None)

    def _init_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"project": self.settings.project, "group": self.experiment_id,
                                  "tags": list(self.settings.tags), "dir": str(self.dir),
                                  "reinit": "create_new"}  # never finish or return a run of the caller's
        if self.settings.entity:
            kwargs["entity"] = self.settings.entity
        kwargs["mode"] = self.settings.resolved_mode()
        return kwargs

    def logger(self, info: LevelInfo) -> WandbLogger:
        """The ``WandbLogger`` of one run, on a W&B run started here with the artifacts the run starts from.

        The run is started with ``wandb.init`` and handed to the logger (``experiment=``) rather than left to
        Lightning: Lightning's logger passes ``anonymous=None`` to ``wandb.init``, which wandb (0.31) answers with
        "The anonymous setting has no effect and will be removed ..." on stderr.
        """
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        config = {**self.config, "level": info.level, "branch": info.branch, "replicate": info.replicate,
                  "remaining": info.remaining, "remaining_pct": 100.0 * info.remaining,
                  "experiment_id": self.experiment_id, "experiment_hash": self.experiment_hash}
        name = run_name(info.branch, info.level, info.remaining, info.replicate) + (f" k={info.at}" if info.at else "")
        rid = run_id(self.experiment_id, f"{info.branch}-{info.at}" if info.at else info.branch, info.replicate,
                     info.level)
        if info.at:
            config["stability_at"] = info.at
        run = wandb.init(name=name, id=rid, resume="allow", job_type=info.branch, config=config,
                         **self._init_kwargs())
        # what Lightning's logger defines for a run it starts itself
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        if self.settings.log_tickets:
            for artifact in self._inputs(info):
                use_artifact(run, artifact)
        return WandbLogger(name=name, id=rid, experiment=run, save_dir=str(self.dir), log_model=False,
                           project=self.settings.project)

    # ------------------------------------------------------------------------------------------- artifacts
    def _inputs(self, info: LevelInfo) -> list[Any]:
        """The artifacts a run starts from: its rewind point (θk of its step for a stability run at one of several
        steps; with ``rewind_to: auto`` the chosen one) and, from level 1, the main line's mask of the level."""
        from lightning_lottery.plan import STABILITY, Run

        at, step = info.at or "", None
        if not at and info.branch != STABILITY:
            chosen = self.store.read_choices().get(info.replicate) or {}
            at, step = str(chosen.get("at") or ""), chosen.get("step")
        point = [self.rewind_artifact(info.replicate, step, at)] if at or info.level > 0 else []
        if info.level == 0:
            return point
        return [*point, self.mask_artifact(Run(info.replicate, self.main_branch, info.level))]

    def rewind_artifact(self, replicate: int, rewind_step: int | None = None, at: str = "") -> Any:
        """The rewind point of a replicate as an artifact (``lottery-rewind-point``); ``at``: its copy at that
        step (``stability.at``)."""
        import wandb

        from lightning_lottery.plan import Run

        path = self.store.snapshot_file(replicate, at) if at else self.store.rewind_file(replicate)
        if rewind_step is None and not at:
            try:
                rewind_step = self.store.read_metrics(Run(replicate, self.main_branch, 0)).get("rewind_step")
            except (OSError, ValueError):
                rewind_step = None
        artifact = wandb.Artifact(
            rewind_artifact_name(self.experiment_id, replicate, at), type="lottery-rewind-point",
            metadata={"replicate": replicate, "rewind_step": rewind_step, "at": at or None,
                      "sha256": file_sha256(path), "experiment_id": self.experiment_id,
                      "recipe_hash": self.experiment_hash})
        artifact.add_file(str(path), name="rewind_point.pt")
        return artifact

    def mask_artifact(self, run: Run) -> Any:
        """The mask a run trains (its ``mask.safetensors``) as an artifact (``lottery-mask``)."""
        import wandb

        from lightning_lottery.masks import checksum, load_mask, remaining

        path = self.store.mask_file(run)
        mask = load_mask(path)
        artifact = wandb.Artifact(
            mask_artifact_name(self.experiment_id, run.branch, run.replicate, run.level), type="lottery-mask",
            metadata={"level": run.level, "branch": run.branch, "replicate": run.replicate,
                      "remaining": remaining(mask), "checksum": checksum(mask),
                      "experiment_id": self.experiment_id, "recipe_hash": self.experiment_hash})
        artifact.add_file(str(path), name="mask.safetensors")
        return artifact

    def _outputs(self, row: Mapping[str, Any], ticket_path: Path | None) -> list[tuple[Any, list[str]]]:
        """The artifacts a finished run logs, with their aliases."""
        import wandb

        from lightning_lottery.masks import checksum, load_mask
        from lightning_lottery.plan import Run

        run = Run(int(row["replicate"]), str(row["branch"]), int(row["level"]), str(row.get("at") or ""))
        out: list[tuple[Any, list[str]]] = []
        own_mask = self.store.mask_file(run)
        mask_sum = checksum(load_mask(own_mask)) if own_mask.is_file() else None
        if ticket_path is not None:
            ticket = wandb.Artifact(
                ticket_artifact_name(self.experiment_id, run.branch, run.replicate, run.level),
                type="lottery-ticket",
                metadata={"level": run.level, "branch": run.branch, "replicate": run.replicate,
                          "remaining": row["remaining"], "checksum": mask_sum, "test_acc": row.get("test_acc"),
                          "early_stop_test_acc": row.get("early_stop_test_acc"),
                          "rewind_step": row.get("rewind_step"),
                          "experiment_id": self.experiment_id, "recipe_hash": self.experiment_hash},
            )
            ticket.add_file(str(ticket_path), name="ticket.safetensors")
            out.append((ticket, ["latest", f"level-{run.level}"]))
        if run.branch == self.main_branch:
            if run.level == 0 and self.store.rewind_file(run.replicate).is_file():
                out.append((self.rewind_artifact(run.replicate, row.get("rewind_step")), ["latest"]))
            copies = sorted(self.store.snapshot_dir(run.replicate).glob("*.pt")) if run.level == 0 else []
            for copy in copies:  # θk at each step of stability.at
                out.append((self.rewind_artifact(run.replicate, at=copy.stem), ["latest"]))
            pruned = run.next_level()
            if self.store.mask_file(pruned).is_file():  # the main line pruned the next level's mask
                out.append((self.mask_artifact(pruned), ["latest", f"level-{pruned.level}"]))
        elif own_mask.is_file():  # a control's own mask (not a copy of the main line's)
            main = self.store.mask_file(run.with_branch(self.main_branch))
            if not main.is_file() or checksum(load_mask(main)) != mask_sum:
                out.append((self.mask_artifact(run), ["latest", f"level-{run.level}"]))
        return out

    def finish_level(self, logger: WandbLogger, row: Mapping[str, Any], ticket_path: Path | None) -> None:
        """Write the run's summary values and its artifacts (ticket, pruned mask, rewind point), then finish it."""
        run = logger.experiment
        run.summary.update(summary_values(row))
        if self.settings.log_tickets:
            for artifact, aliases in self._outputs(row, ticket_path):
                run.log_artifact(artifact, aliases=aliases)
        run.finish()

    # --------------------------------------------------------------------------------------- the summary run
    def finish_experiment(self, rows: Sequence[Mapping[str, Any]], images: Mapping[str, Path] | None = None) -> None:
        """A ``summary`` run: the results table; the mean ± 95% CI over replicates per (branch, level) as a table
        and as charts (test accuracy, early-stop accuracy vs % remaining: mean and both CI bounds per branch); the
        main line's mask overlap between replicates per level (table, chart, summary values); the report's
        figures."""
        import wandb

        from lightning_lottery import measured
        from lightning_lottery.aggregate import aggregate

        columns = ["branch", "replicate", "level", "remaining_pct", "test_acc", "early_stop_iter",
                   "early_stop_test_acc", "min_val_loss", "steps"]
        data = [[r["branch"], r["replicate"], r["level"], 100.0 * r["remaining"], r.get("test_acc"),
                 r.get("early_stop_iter"), r.get("early_stop_test_acc"), r.get("min_val_loss"), r.get("steps")]
                for r in rows]
        stats = aggregate(rows, metrics=AGGREGATED)
        overlap = mask_overlap_by_level(self.store, self.main_branch, sorted({int(r["replicate"]) for r in rows}),
                                        sorted({int(r["level"]) for r in rows if r["branch"] == self.main_branch}))
        run = wandb.init(job_type="summary", name=f"{self.experiment_id} summary",
                         config={**self.config, "experiment_id": self.experiment_id,
                                 "experiment_hash": self.experiment_hash}, **self._init_kwargs())
        try:
            table = wandb.Table(columns=columns, data=data)
            agg_columns, agg_data = aggregate_table(stats)
            agg = wandb.Table(columns=agg_columns, data=agg_data)
            n = max((s["n"] for s in stats), default=0)
            payload: dict[str, Any] = {
                "results": table,
                "aggregate": agg,
                "test_acc_vs_remaining": ci_chart(stats, "test_acc", f"Test accuracy vs % weights remaining "
                                                                    f"(mean ± 95% CI, {n} replicate(s))"),
                "early_stop_acc_vs_remaining": ci_chart(
                    stats, "early_stop_test_acc",
                    f"Test accuracy at early stop vs % weights remaining (mean ± 95% CI, {n} replicate(s))"),
                "early_stop_vs_remaining": wandb.plot.line(
                    table, "remaining_pct", "early_stop_iter", stroke="branch",
                    title="Early-stopping iteration vs % weights remaining"),
            }
            if overlap:
                ov = wandb.Table(columns=list(overlap[0]), data=[list(o.values()) for o in overlap])
                payload["mask_overlap"] = ov
                payload["mask_overlap_vs_level"] = wandb.plot.line_series(
                    [o["level"] for o in overlap],
                    [[o["overlap"] for o in overlap], [o["random_expected"] for o in overlap]],
                    keys=["between replicates", "random masks (expected)"], xname="level",
                    title=f"{self.main_branch} mask overlap between replicates |m1∧m2|/|m1| per level")
            measurements = measured.read(self.store.root)  # lightning-lottery benchmark's, when run before
            if measurements:
                m_columns, m_data = measured.measurement_rows(measurements)
                payload["measured_speedup"] = wandb.Table(columns=m_columns, data=m_data)
            curves = stability_table(rows)
            if curves:  # the instability analysis: every curve, and test error vs α per (level, k)
                payload["stability_curves"] = wandb.Table(columns=list(STABILITY_COLUMNS), data=curves)
                payload["stability_test_err_vs_alpha"] = stability_chart(
                    curves, "Test error along (1−α)·θ¹ + α·θ² per (level, k) (mean over replicates)")
            for key, path in (images or {}).items():
                payload[f"report/{key}"] = wandb.Image(str(path))
            run.log(payload)
            run.summary.update({"levels": len({r["level"] for r in rows}), "runs": len(rows),
                                "replicates": n,
                                **{f"mask_overlap_by_level/level_{o['level']:02d}": o["overlap"] for o in overlap}})
        finally:
            run.finish()


#: The metrics the summary run aggregates over replicates.
AGGREGATED: tuple[str, ...] = ("test_acc", "early_stop_test_acc", "early_stop_iter", "remaining")


