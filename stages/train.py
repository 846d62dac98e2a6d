"""The train stage: the loop of :mod:`pipeline.training.loop` inside one tracked run.

``python -m stages.train`` reads the split manifest, the augmentation (online, or the offline cache),
and the initial weights from the model stage; trains with the declared loss, optimizer, scheduler and
precision; checkpoints every epoch (resumable); writes the best weights, per-epoch history (DVC plots),
final metrics (DVC metrics) and the MLflow run id that evaluate logs into.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import yaml

from pipeline import outputs
from pipeline.atomic import write_json, write_text
from pipeline.config.params import ParamsView, flatten
from pipeline.data.manifest import load_manifest
from pipeline.models.file import load_model
from pipeline.models.input_contract import resolve_device
from pipeline.plots import draw_history, save_png
from pipeline.search.trial import TrialReporter
from pipeline.stage import run_stage
from pipeline.tracking import run as tracking
from pipeline.tracking.store import portable_uri
from pipeline.training import checkpoint, loop
from pipeline.training import distributed as dist

PARAMS = (
    "data.task",
    "data.image_size",
    "data.resize",
    "data.crop",
    "data.max_side",
    "evaluate.tile",
    "augment.train",
    "augment.eval",
    "augment.random_order",
    "augment.offline",
    "augment.device",
    "augment.mix",
    "model.lr_mult",
    "model.grad_checkpointing",
    "loss",
    "optimizer",
    "scheduler",
    "precision",
    "train",
)
# Read only to say where the run is recorded (tracking), not what is trained: no DVC params, so editing
# them re-runs nothing (pipeline.stage.run_stage explains the split).
RECORD_PARAMS = ("tracking",)


def train(view: ParamsView) -> dict[str, Any]:
    """Train on the split manifest from the model stage's initial weights; write and return the final metrics."""
    cfg, task, root = view["train"], view["data.task"], view.root
    manifest_path = outputs.require(root, outputs.MANIFEST)
    init_path = outputs.require(root, outputs.MODEL_INIT)
    inputs = [manifest_path, init_path]
    if view["augment.offline"]["enabled"]:
        inputs.append(outputs.require(root, outputs.AUGMENT_CACHE))
    if cfg["distill"]["teacher"]:  # named by a param, so no DVC dep: its bytes go in the resume fingerprint
        inputs.append(view.resolve_path(cfg["distill"]["teacher"]))
    fp = checkpoint.fingerprint(
        {"checkpoint_format": loop.CHECKPOINT_FORMAT, **{key: view[key] for key in PARAMS}}, inputs
    )
    ckpt_path = root / outputs.TRAIN_CHECKPOINT / "last.pt"
    state = checkpoint.load_resumable(ckpt_path, fp) if cfg["resume"] else None  # every rank: same file
    # The model stage wrote this file from params.yaml, whose own code (model.name) is the user's to run.
    model, info = load_model(init_path, trust_code=True)
    ctx, device = dist.setup(cfg["devices"], resolve_device(cfg["device"], key="train.device"))
    # Opening the run first fails fast on an unreachable tracking server, before any work. Only rank 0
    # records anything; the other ranks get the do-nothing run.
    tracking_cfg = view["tracking"] if ctx.is_main else {**view["tracking"], "enabled": False}
    with tracking.start_run(
        tracking_cfg,
        repo_root=root,
        run_name=f"{task}-{info.config['name']}",
        run_id=state["run_id"] if state else None,
    ) as run:
        run.monitor_system(view["tracking"]["system_metrics"], resumed=state is not None)
        if state is None:
            run.log_params(flatten(view.all_params()))
        manifest = load_manifest(manifest_path)
        trainer = loop.build(view, manifest, model, info, ctx, device)
        if state is None:
            run.set_tags(
                {
                    "dataset_fingerprint": manifest.fingerprint,
                    "device": str(device),
                    "precision": trainer.step.precision.name,
                }
            )
            # The fingerprint is the data's (its files), not the split's: the split goes in the input's tags.
            run.log_dataset(
                manifest.root,
                digest=manifest.fingerprint,
                source=str(view.resolve_path(manifest.root)),
                profile={"fingerprint": manifest.fingerprint},
                tags={
                    "task": manifest.task,
                    "num_classes": manifest.num_classes,
                    **{f"split.{s}": len(e) for s, e in manifest.splits.items()},
                },
            )
        # A search trial (python -m pipeline search) reports each epoch and may be pruned; single process only.
        trial = TrialReporter.from_env() if not ctx.enabled else None
        history = loop.fit(trainer, run, root=root, fingerprint=fp, state=state, trial=trial)

        stopper, monitor = trainer.stopper, trainer.monitor
        # metrics.json is the score `dvc exp show` leads with (the best weights' monitored value); how the
        # run went (epochs, where it stopped, the last epoch's row) is a record: summary.json.
        metrics = {f"best_{monitor}": stopper.best}
        summary = {
            "monitor": monitor,
            "best_epoch": stopper.best_epoch,
            "epochs_run": len(history),
            "stopped_early": stopper.should_stop,
            "pruned": stopper.pruned,
            "last_epoch": history[-1],
            "imbalance": manifest.summary.get("imbalance"),  # of the training split (largest/smallest class)
            "sampler": cfg["sampler"],
            "auto_loss": trainer.auto_loss,  # loss arguments computed from the class counts (auto)
            # which weights best.safetensors holds: the model's, or with train.ema (keep) its average's
            "best_weights": trainer.ema.best_weights if trainer.ema is not None else "model",
        }
        if ctx.is_main:
            write_json(root / outputs.TRAIN_SUMMARY, summary)
            write_json(root / outputs.TRAIN_METRICS, metrics)
            write_json(root / outputs.TRAIN_RUN, {"run_id": run.run_id, "tracking_uri": portable_uri(run.uri, root)})
            save_png(root / outputs.TRAIN_HISTORY_PNG, draw_history(history))
            write_text(root / outputs.TRAIN_PARAMS, yaml.safe_dump(view.all_params(), sort_keys=False))
            for path in (outputs.TRAIN_HISTORY, outputs.TRAIN_HISTORY_PNG, outputs.TRAIN_PARAMS):
                run.log_artifact(root / path)  # at the root, where the compare view looks
            # Counts and indices are not curves: the outcome is tags; the best score, a metric at its epoch.
            run.set_tags({key: summary[key] for key in ("epochs_run", "best_epoch", "stopped_early", "best_weights")})
            if trial is not None:
                run.set_tags({"search.state": "pruned" if stopper.pruned else "complete"})
            assert stopper.best is not None  # at least one epoch was scored (or restored with the checkpoint)
            run.log_metrics({f"best_{monitor}": stopper.best}, step=stopper.best_epoch)
            run.log_model(root / outputs.TRAIN_BEST, register_as=view["tracking"]["register_model"])
            print(
                f"train: best {monitor} {stopper.best:.4f} at epoch {stopper.best_epoch}; "
                f"weights in {root / outputs.TRAIN_BEST}"
            )
    dist.teardown(ctx)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("train", PARAMS, train, argv, records=RECORD_PARAMS)


if __name__ == "__main__":
    sys.exit(main())
