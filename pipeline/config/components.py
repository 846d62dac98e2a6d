"""Where the components' semantic checks and registries live: data, in one place.

Each entry is a dotted string, ``"module.path:attribute"`` (as torchtune's ``_component_``), resolved
by :func:`pipeline.config.registry.import_object` when it is used, never at import. So the config
layer imports nothing above it (a test reads its imports), a stage imports the checks of the keys it
reads only (the split stage loads no torch), ``validate`` those of every section, and each check loads
heavy libraries (timm, torchvision, imgaug, mlflow...) only for what the file declares. A check is a
plain function ``fn(params) -> problems``; its entry here says which keys it reads, so adding one is
one line here, with nothing to keep in step with its module (a test resolves every entry).

A check has a subject (the first key: what it validates; a stage runs it when it reads a key inside
or around the subject) and context (other keys it reads); ``stand_ins`` are values of a context key to
run it on when the schema rejected that key (see :mod:`pipeline.config.checks`).
"""

from __future__ import annotations

from pipeline.config.check_spec import CheckSpec, check

# The params.yaml sections a search trial may set (every one but ``search`` itself).
TRIAL_SECTIONS = (
    "data",
    "split",
    "augment",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "precision",
    "train",
    "evaluate",
    "export",
    "tracking",
)

# Every semantic check of params.yaml, by section.
CHECKS: tuple[CheckSpec, ...] = (
    check("pipeline.data.files:check_data", "data"),
    check("pipeline.data.labels:check_labels", "data.task", "data.root", "data.labels"),
    check("pipeline.data.split:check_split", "split"),
    check(
        "pipeline.augment.checks:check_augment",
        "augment",
        "data.task",
        "data.image_size",
        stand_ins={"data.image_size": (None,)},
    ),
    check("pipeline.augment.checks:check_augment_device", "augment", "data.task"),
    check("pipeline.augment.mix:check_mix", "augment.mix", "data.task"),
    check("pipeline.training.losses.section:check_mix_targets", "augment.mix", "data.task", "loss"),
    check("pipeline.models.networks:check_model", "model", "data.task", "data.num_classes", "data.image_size"),
    check("pipeline.training.losses.section:check_loss", "loss", "data.task", "data.num_classes", "model.num_classes"),
    check(
        "pipeline.training.optimizer:check_optimizer",
        "optimizer.name",
        "optimizer.params",
        "optimizer.no_decay_norm_bias",
    ),
    check(
        "pipeline.training.scheduler:check_scheduler", "scheduler", "train.epochs", stand_ins={"train.epochs": (1000,)}
    ),
    check(
        "pipeline.training.distill:check_distill",
        "train.distill",
        "data.task",
        "data.num_classes",
        "data.image_size",
        "data.root",
        "data.labels",
        "model.num_classes",
        "model.in_chans",
    ),
    check("pipeline.training.sampling:check_sampler", "train.sampler", "data.task", "data.root", "data.labels"),
    check("pipeline.training.precision:check_precision", "precision.dtype", "train.device"),
    check("pipeline.training.ema:check_ema_monitor", "train.early_stopping.monitor", "train.ema"),
    check(
        "pipeline.training.multilabel_metrics:check_threshold",
        "evaluate.threshold",
        "data.task",
        "data.root",
        "data.labels",
    ),
    check("pipeline.tracking.store:check_tracking", "tracking"),
    # A trial may set any key of these sections (pipeline.search.space.SECTIONS; a test holds the two equal).
    # A trial may set any key of these sections: the search check reads them all.
    check("pipeline.search.space:check_search", "search", *TRIAL_SECTIONS),
)

# Registry kind (`python -m pipeline list KIND`) -> the Registry object, created when its module is imported.
REGISTRIES: dict[str, str] = {
    "augmenters": "pipeline.augment.augmenters:augmenters",
    "models": "pipeline.models.networks:MODELS",
    "losses": "pipeline.training.losses.base:losses",
    "optimizers": "pipeline.training.optimizer:optimizers",
    "schedulers": "pipeline.training.scheduler:schedulers",
}
