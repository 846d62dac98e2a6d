"""The model stage: build the network, load its starting weights, give it a new head, freeze what is
asked, and write the initial weights training starts from (``outputs/model/init.safetensors``).

The file carries its own recipe (:mod:`pipeline.models.file`), so later stages rebuild the module
without reading ``model.*``, and a change to the loss or optimizer never re-runs this stage.
Fine-tuning is the four textbook steps (:mod:`pipeline.models.initial`): a source model trained on a
source task (``model.pretrained``), copy all but its output layer (a head of another shape is
dropped), a new output layer (built with this task's outputs), train on the target.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline import outputs
from pipeline.atomic import write_json
from pipeline.config.errors import PipelineError
from pipeline.config.params import ParamsView
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.models import networks
from pipeline.models.file import save_model
from pipeline.models.initial import initial_model, summarize
from pipeline.stage import run_stage

PARAMS = (
    "model.source",
    "model.name",
    "model.num_classes",
    "model.in_chans",
    "model.pretrained",
    "model.freeze",
    "model.unet",
    "data.image_size",
    "train.seed",
)


def architecture(view: ParamsView, manifest: Manifest) -> dict[str, Any]:
    """The architecture config recorded in the initial weights (all that rebuilding needs); the task
    and the class count are the data's, as the split stage resolved them."""
    task, data_classes, wanted = manifest.task, int(manifest.num_classes), view["model.num_classes"]
    if wanted is not None and wanted < data_classes:
        raise PipelineError(
            f"model.num_classes: {wanted} is fewer than the {data_classes} classes in the data "
            f"({outputs.MANIFEST}); use null to follow the data"
        )
    declared = {key: view[f"model.{key}"] for key in ("source", "name", "in_chans", "unet")}
    return networks.architecture(
        declared, task=task, num_classes=wanted or data_classes, image_size=view["data.image_size"]
    )


def model(view: ParamsView) -> dict[str, Any]:
    """Build the model, load its starting weights, fit the new head, freeze; write the initial
    weights and their summary; return the summary."""
    manifest = load_manifest(outputs.require(view.root, outputs.MANIFEST))
    config = architecture(view, manifest)
    net, info, report = initial_model(
        config,
        pretrained=view["model.pretrained"],
        freeze=view["model.freeze"],
        seed=view["train.seed"],
        root=view.root,
    )
    info.class_names = list(manifest.class_names)
    init_sha256 = save_model(view.root / outputs.MODEL_INIT, net, info)
    summary = summarize(net, info, report, init_sha256)
    write_json(view.root / outputs.MODEL_SUMMARY, summary)
    counts = summary["parameters"]
    print(
        f"model: {summary['architecture']} -> {config['num_outputs']} output(s); {counts['total']:,} parameters, "
        f"{counts['trainable']:,} trainable; head {', '.join(info.head_prefixes)}"
    )
    if report is not None:
        print(
            f"model: weights {report.path} (sha256 {(report.sha256 or '?')[:12]}): {report.loaded} tensors loaded"
            + (
                f"; dropped {len(report.dropped)} tensor(s) that do not fit (the source's head; a new one is trained): "
                f"{', '.join(d.split(':')[0] for d in report.dropped[:6])}"
                if report.dropped
                else ""
            )
            + (f"; adapted {'; '.join(report.adapted)}" if report.adapted else "")
            + (f"; {len(report.missing)} tensor(s) start random" if report.missing else "")
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("model", PARAMS, model, argv)


if __name__ == "__main__":
    sys.exit(main())
