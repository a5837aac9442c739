"""Using artifacts from a run, online and offline (wandb refuses ``use_artifact`` offline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    pass




def use_artifact(run: Any, artifact: Any) -> None:
    """Declare ``artifact`` (a local ``wandb.Artifact``) an input of ``run``.

    Online this is ``run.use_artifact(artifact)``: W&B commits the artifact (deduplicated by digest, so the
    version its producer logged) and records the use. Offline ``use_artifact`` raises (wandb 0.31: ``TypeError:
    Cannot use artifact when in offline mode``), so this writes the record ``use_artifact`` writes for a local
    artifact through the same internal call (``_log_artifact(..., is_user_created=True,
    use_after_commit=True)``); ``wandb sync`` then commits it and records the use. Should that internal call be
    gone in a later wandb, offline runs are left without their inputs and one warning says so.
    """
    if not getattr(run, "offline", False):
        run.use_artifact(artifact)
        return
    log = getattr(run, "_log_artifact", None)
    if log is None:
        _warn_once("this wandb has no Run._log_artifact: offline runs do not record the artifacts they use")
        return
    log(artifact, is_user_created=True, use_after_commit=True)


_WARNED: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        import warnings

        warnings.warn(text, stacklevel=3)
