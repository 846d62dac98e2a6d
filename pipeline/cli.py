"""``python -m pipeline``: validate, show and list a params file, start one from an example (init), regenerate
the editor schema fragments (schema); predict with and export a trained model."""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from pipeline.config.errors import PipelineError, report
from pipeline.config.params import DEFAULT_PARAMS, load_params, lookup
from pipeline.config.registry import REGISTRIES
from pipeline.config.schema import did_you_mean, fill_defaults


def _validate(args: argparse.Namespace) -> int:
    path = args.params or args.path or DEFAULT_PARAMS
    params = load_params(path)
    print(f"{path}: valid")
    from pipeline.augment.checks import augment_notes  # registered by load_params already

    for note in augment_notes(params, str(path)):
        print(note)
    return 0


# Sections whose `name` picks an implementation from a registry, and where its keyword arguments go.
NAMED_SECTIONS = {"loss": "losses", "optimizer": "optimizers", "scheduler": "schedulers"}


def _default_arguments(kind: str, name: str, given: dict) -> dict[str, object]:
    """The keyword arguments of registry entry ``name`` that params.yaml leaves at their default."""
    from pipeline.config.arguments import keyword_arguments

    impl = REGISTRIES[kind].find(name)
    arguments = keyword_arguments(impl, kind) if impl is not None else []
    return {
        a.name: a.default
        for a in arguments
        if not a.required
        and a.name not in given
        and isinstance(a.default, (int, float, str, bool, type(None), tuple, list))
    }


def _show(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.section:
        try:
            value = {args.section: lookup(params.data, args.section)}
        except KeyError:
            hint = did_you_mean(args.section.split(".")[-1], params.data)
            raise PipelineError(f"no key {args.section!r} in {args.params}{hint}") from None
    else:
        value = params.data
    sys.stdout.write(yaml.safe_dump(value, sort_keys=False, default_flow_style=None))
    section = (args.section or "").split(".")[0]
    if section in NAMED_SECTIONS and args.section in (section, f"{section}.params", f"{section}.name"):
        cfg = params.data[section]
        defaults = _default_arguments(NAMED_SECTIONS[section], cfg["name"], cfg.get("params") or {})
        if defaults:
            print(f"# {cfg['name']}: the other arguments {section}.params may set, with their defaults")
            for line in yaml.safe_dump(defaults, sort_keys=False, default_flow_style=False).splitlines():
                print(f"#   {line}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.kind not in REGISTRIES:
        kinds = ", ".join(sorted(REGISTRIES)) or "none yet"
        raise PipelineError(f"unknown kind {args.kind!r}{did_you_mean(args.kind, REGISTRIES)}; kinds: {kinds}")
    registry = REGISTRIES[args.kind]
    # 'resnet*' matches timm/resnet18 too: a pattern without a family prefix matches the name after it.
    names = [
        n
        for n in registry.names()
        if fnmatch.fnmatch(n, args.pattern)
        or ("/" not in args.pattern and fnmatch.fnmatch(n.split("/")[-1], args.pattern))
    ]
    runs_on: Callable[[str], str] | None = None
    if args.kind == "augmenters":  # where each can run: device (a batched torch version) or cpu
        from pipeline.augment import device_support

        runs_on = device_support.runs_on
    for name in names:
        desc = registry.describe(name) if args.long else ""
        desc = f"{runs_on(name):6s} {desc}" if runs_on else desc
        print(f"{name:32s} {desc}".rstrip() if desc else name)
    return 0


def _threshold(text: str) -> float | dict[str, float]:
    """predict's --threshold: one number, or (multilabel) per class ``NAME=VALUE[,NAME=VALUE...]``. The
    values are judged afterwards by evaluate.threshold's schema rule, the names against the model's classes."""
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number nor NAME=VALUE pairs") from None
    pairs: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = (s.strip() for s in part.partition("="))
        try:
            pairs[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: expected NAME=VALUE with a number") from None
        if not name:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: a class name is missing before '='")
    return pairs


def _predict(args: argparse.Namespace) -> int:
    from pipeline.inference.predict import predict_files
    from pipeline.inference.predictor import Predictor
    from pipeline.tracking.model import local_weights

    model = local_weights(args.model)
    predictor: Predictor
    if model.suffix == ".onnx":  # the exported graph, run by onnxruntime, prepared and tiled alike
        from pipeline.inference.onnx_predictor import OnnxPredictor

        predictor = OnnxPredictor.from_onnx(model, threshold=args.threshold, flip_tta=args.tta)
    else:
        predictor = Predictor.from_file(
            model, device=args.device, threshold=args.threshold, flip_tta=args.tta, trust_code=args.trust_code
        )
    done = predict_files(
        predictor, args.inputs, Path(args.out), batch_size=args.batch_size, overlays=args.overlays, model=model
    )
    what = "predictions.csv" if predictor.task in ("classification", "multilabel") else "masks/"
    print(f"predict: {done.predicted} image(s) -> {Path(args.out) / what}")
    for path, reason in done.failed:
        print(f"predict: could not read {path}: {reason}", file=sys.stderr)
    if done.failed:
        print(f"predict: {len(done.failed)} input(s) could not be read (listed above)", file=sys.stderr)
    return 1 if done.failed else 0


def _export(args: argparse.Namespace) -> int:
    from pipeline.inference.export import export_model
    from pipeline.tracking.model import local_weights

    report = export_model(
        local_weights(args.model),
        args.format,
        Path(args.out),
        tolerance=args.tolerance,
        opset=args.opset,
        dynamic_size=not args.fixed_size,
        trust_code=args.trust_code,
    )
    print(f"export: {report.summary()}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from pipeline.search.runner import run_search

    return run_search(args.params, trials=args.trials, jobs=args.jobs, timeout=args.timeout, report_only=args.report)


def _schema(args: argparse.Namespace) -> int:
    """Write (or with --check, only compare) the completion fragments generated from the registries."""
    from pipeline.atomic import write_text
    from pipeline.config import fragments

    changed = fragments.stale()
    if args.check:
        for path in changed:
            print(f"schema: {path} is out of date; run `{fragments.COMMAND}`", file=sys.stderr)
        return 1 if changed else 0
    for kind in fragments.SECTIONS:
        if fragments.fragment_path(kind) in changed:
            write_text(fragments.fragment_path(kind), fragments.render(kind))
    for kind in fragments.SECTIONS:
        state = "written" if fragments.fragment_path(kind) in changed else "up to date"
        print(f"schema: {os.path.relpath(fragments.fragment_path(kind))}: {state}")
    return 0


def _dvc(args: argparse.Namespace) -> int:
    """Generate (or with --check, only compare) each dvc.yaml stage's deps and params from its code."""
    from pipeline import dvcfile

    if args.check:
        drift = dvcfile.check()
        for line in drift:
            print(f"dvc: {line}; run `{dvcfile.COMMAND}`", file=sys.stderr)
        return 1 if drift else 0
    fixed = dvcfile.write()
    for line in fixed:
        print(f"dvc: {line}")
    print(f"dvc: {dvcfile.DVC_YAML}: {'written' if fixed else 'up to date'}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    """Generate (or with --check, only compare) configs/*.yaml: params.yaml with each overlay over it."""
    from pipeline.atomic import write_text
    from pipeline.config import examples

    changed = examples.stale()
    if args.check:
        for path in changed:
            print(f"configs: {os.path.relpath(path)} is out of date; run `{examples.COMMAND}`", file=sys.stderr)
        return 1 if changed else 0
    for path, text in changed.items():
        write_text(path, text)
    for path in examples.generated():
        print(f"configs: {os.path.relpath(path)}: {'written' if path in changed else 'up to date'}")
    return 0


def _init(args: argparse.Namespace) -> int:
    """Copy an example params file, its schema modeline rewritten to resolve from where it lands."""
    from pipeline.atomic import write_text
    from pipeline.config.modeline import installed_text

    config, out = Path(args.config), Path(args.out)
    if out.exists() and not args.force:
        raise PipelineError(f"{out} exists; pass --force to overwrite it (or --out another file)")
    if out.exists() and out.resolve() == config.resolve():
        raise PipelineError(f"{out}: is the file to start from; pass another --out")
    text, reference = installed_text(config, out)
    write_text(out, text)
    print(f"init: wrote {out} from {config} (schema: {reference}); check it: python -m pipeline validate {out}")
    return 0


TRUST_HELP = (
    "load a model file whose recipe names your own code (module.path:attr), importing and running it; "
    "only for files you trust"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Declarative PyTorch image training: params.yaml tools."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a params file; exit 2 listing every problem")
    p.add_argument("path", nargs="?", help="the params file (default: params.yaml)")
    p.add_argument("--params", help="the params file, as the stages take it")
    p.set_defaults(func=_validate)
    p = sub.add_parser("show", help="print the resolved configuration (defaults filled in) as YAML")
    p.add_argument("section", nargs="?", help="a section or dotted key, e.g. loss or train.epochs")
    p.add_argument("--params", default=DEFAULT_PARAMS)
    p.set_defaults(func=_show)
    p = sub.add_parser("list", help="list what a registry holds (losses, schedulers, models, ...)")
    p.add_argument("kind")
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'resnet*'")
    p.add_argument("--long", action="store_true", help="with a one-line description")
    p.set_defaults(func=_list)
    p = sub.add_parser("predict", help="predict with a trained model: classes (CSV) or masks (PNG)")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument(
        "--model",
        default="outputs/train/best.safetensors",
        help="a model file, an exported model.onnx (run by onnxruntime), or runs:/RUN_ID (its weights in the MLflow store)",
    )
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:1")
    p.add_argument(
        "--threshold",
        type=_threshold,
        help="binary tasks: foreground above this probability; multilabel: one number or per class, e.g. "
        "circle=0.4,triangle=0.6 (evaluate.threshold's mapping; unnamed classes 0.5). Default: the model file's",
    )
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--overlays", action="store_true", help="segmentation: also write the masks drawn on the images")
    p.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_predict)
    p = sub.add_parser("export", help="export a trained model to ONNX or TorchScript, checked against PyTorch")
    export_defaults = fill_defaults({"export": {}})["export"]  # the export section's, as the stage uses them
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument(
        "--model",
        default="outputs/train/best.safetensors",
        help="a model file, an exported model.onnx (run by onnxruntime), or runs:/RUN_ID (its weights in the MLflow store)",
    )
    p.add_argument("--out", required=True, help="the file to write (TorchScript: and FILE.json beside it)")
    p.add_argument("--opset", type=int, default=export_defaults["opset"], help="ONNX opset (default: %(default)s)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=export_defaults["tolerance"],
        help="largest absolute logit difference from PyTorch allowed (default: %(default)s)",
    )
    p.add_argument("--fixed-size", action="store_true", help="fix height and width at the model's image size")
    p.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=_export)
    p = sub.add_parser("search", help="find the best configuration: trials of search.space as DVC experiments")
    p.add_argument("--params", default=DEFAULT_PARAMS)
    p.add_argument("--trials", type=int, help="completed + pruned trials the study should reach (search.trials)")
    p.add_argument("--jobs", type=int, help="trials at once on this machine (search.jobs)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--report", action="store_true", help="only report the study: top trials, counts, plots")
    p.set_defaults(func=_search)
    p = sub.add_parser("schema", help="regenerate the editor-completion schema fragments from the registries")
    p.add_argument("--check", action="store_true", help="only report out-of-date fragments (exit 1)")
    p.set_defaults(func=_schema)
    p = sub.add_parser("dvc", help="generate each dvc.yaml stage's deps and params from its code")
    p.add_argument("--check", action="store_true", help="only report stages out of step (exit 1)")
    p.set_defaults(func=_dvc)
    p = sub.add_parser("configs", help="generate configs/*.yaml from params.yaml and configs/overlays/*.yaml")
    p.add_argument("--check", action="store_true", help="only report out-of-date examples (exit 1)")
    p.set_defaults(func=_configs)
    p = sub.add_parser("init", help="start params.yaml from an example, e.g. configs/classification.yaml")
    p.add_argument("config", help="the example params file to start from")
    p.add_argument("--out", default=DEFAULT_PARAMS, help="the file to write (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    p.set_defaults(func=_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # argparse fills an optional positional before the options it meets: `list models --long 'res*'`
    if rest and args.command == "list" and args.pattern == "*" and len(rest) == 1 and not rest[0].startswith("-"):
        args.pattern, rest = rest[0], []
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except PipelineError as exc:
        return report(exc, "pipeline")
    except BrokenPipeError:  # `python -m pipeline list models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
