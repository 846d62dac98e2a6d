"""Benchmark: TPE with median pruning against random search and a grid of the same number of trials, on
the embedded classification data, several seeds, in one run: the best validation score each reaches
and the epochs each spends.

Trials run in this process, not as DVC experiments, but through the same code a search uses: the study
is :func:`pipeline.search.study.open_study` (the project's sampler and pruner, a journal file storage), values
come from :func:`pipeline.search.space.suggest`, and each trial is the train stage itself
(``stages.train.main``) with ``YAMLTRAIN_TRIAL`` set, so every epoch's ``val_accuracy`` goes through
:class:`pipeline.search.trial.TrialReporter` and the pruner stops the trial as it would in a search.
Outcomes are read from ``outputs/train/metrics.json`` and ``summary.json`` as the search reads them.

The workspace: ``configs/classification.yaml`` on ``data/shapes-cls`` (210 train / 45 val images), at
``--image-size`` px, with a tiny timm model (``--model``), no pretrained weights, tracking off; the
split and decode stages run once, the model stage once per seed (its initial weights depend on
``train.seed``). The space is ``optimizer.lr``, log-uniform in [``--lr-low``, ``--lr-high``]; the grid is
``--trials`` log-spaced values of the same range (a categorical dimension). Per seed ``s``: the sampler
seed and ``train.seed`` are ``s`` for every strategy.

    tpe+median  TPESampler, MedianPruner (``search.pruner: {name: median, warmup_epochs, startup_trials}``).
                Optuna's TPE draws its first 10 trials at random, from the same seed as RandomSampler:
                those trials get the random strategy's values and differ from it only by pruning.
    random      RandomSampler, no pruning
    grid        GridSampler over the log-spaced values, no pruning

A strategy's best is the study's best completed trial (pruned trials do not count, as in
``python -m pipeline search``). Target (issue 21): tpe+median reaches the grid's best within
``--tolerance`` (default: one validation image, 1/45) with at most half the grid's epochs; judged per
seed and on the means.

What the stages print goes to a log in the temporary workspace; a line per trial is printed here.
Not a test: run it by hand, on a quiet machine (defaults: about 6.5 minutes on 2 shared CPU cores, one
torch thread).

    python benchmarks/search_bench.py
    python benchmarks/search_bench.py --trials 24 --epochs 10 --seeds 5 --json search.json
    python benchmarks/search_bench.py --image-size 64 --model resnet10t --threads auto
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline import outputs  # noqa: E402
from pipeline.search import study as studies  # noqa: E402
from pipeline.search.space import suggest  # noqa: E402
from pipeline.search.trial import ENV  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import model as model_stage  # noqa: E402
from stages import split as split_stage  # noqa: E402
from stages import train as train_stage  # noqa: E402

CONFIG = REPO / "configs" / "classification.yaml"
DATA = REPO / "data" / "shapes-cls"
STRATEGIES = ("tpe+median", "random", "grid")
OBJECTIVE = "best_val_accuracy"  # the classification monitor (train.early_stopping.monitor: auto)
EPS = 1e-9  # k/45 - 1/45 is not always (k-1)/45 in floats: "within the tolerance" includes its end


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16, help="trials per strategy and seed = grid points (default 16)")
    p.add_argument("--epochs", type=int, default=6, help="train.epochs of every trial (default 6)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--image-size", type=int, default=32, help="data.image_size, px (default 32)")
    p.add_argument("--model", default="test_efficientnet", help="timm model name (default test_efficientnet)")
    p.add_argument("--lr-low", type=float, default=1e-4, help="optimizer.lr range, low end (default 1e-4)")
    p.add_argument("--lr-high", type=float, default=1e-1, help="optimizer.lr range, high end (default 1e-1)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="search.pruner.warmup_epochs (default 1)")
    p.add_argument("--startup-trials", type=int, default=5, help="search.pruner.startup_trials (default 5)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="how far below the grid's best still counts as reaching it (default: 1 / validation images)",
    )
    p.add_argument("--threads", default="1", help="train.threads: N or auto (default 1)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    args = p.parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.seeds < 1 or not 0 < args.lr_low < args.lr_high:
        p.error("--trials, --epochs and --seeds must be at least 1, and 0 < --lr-low < --lr-high")
    return args


# --- the workspace: the stages themselves build the split, the decoded cache, the initial weights ------


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def base_params(args: argparse.Namespace) -> dict[str, Any]:
    """configs/classification.yaml shrunk to a CPU: the benchmark's size and model, tracking off."""
    params = yaml.safe_load(CONFIG.read_text())
    threads: int | str = int(args.threads) if args.threads.isdigit() else args.threads
    for key, value in {
        "data.root": "data",
        "data.image_size": [args.image_size] * 2,
        "model.name": args.model,
        "model.pretrained": False,
        "train.epochs": args.epochs,
        "train.workers": 0,
        "train.threads": threads,
        "train.device": "cpu",
        "train.resume": False,
        "precision.dtype": "fp32",
        "evaluate.workers": 0,
        "evaluate.device": "cpu",
        "tracking.enabled": False,
        # the config's one warmup epoch, unless it would be the whole run (validate refuses that)
        "scheduler.warmup.epochs": min(params["scheduler"]["warmup"]["epochs"], args.epochs - 1),
    }.items():
        _set(params, key, value)
    return params


def write_params(ws: Path, params: dict[str, Any], **values: Any) -> Path:
    data = json.loads(json.dumps(params))  # a deep copy YAML writes without aliases
    for key, value in values.items():
        _set(data, key, value)
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_stage(stage: Any, path: Path, log: Path) -> None:
    with open(log, "a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = stage.main(["--params", str(path)])
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"{stage.__name__} failed on the benchmark workspace:\n{tail}")


# --- one strategy on one seed ---------------------------------------------------------------------


def spaces(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """search.space per strategy: the log range, and the grid's log-spaced values of the same range."""
    lr = {"type": "float", "low": args.lr_low, "high": args.lr_high, "log": True}
    points = [float(f"{v:.3g}") for v in np.geomspace(args.lr_low, args.lr_high, args.trials)]
    grid = {"type": "categorical", "choices": list(dict.fromkeys(points))}
    if len(grid["choices"]) != args.trials:
        raise SystemExit(f"the grid has {len(grid['choices'])} distinct values (3 digits), not --trials {args.trials}")
    return {"tpe+median": {"optimizer.lr": lr}, "random": {"optimizer.lr": lr}, "grid": {"optimizer.lr": grid}}


def search_section(strategy: str, space: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    sampler = {"tpe+median": "tpe", "random": "random", "grid": "grid"}[strategy]
    pruner = "median" if strategy == "tpe+median" else "none"
    return {
        "sampler": {"name": sampler, "seed": seed},
        "pruner": {"name": pruner, "warmup_epochs": args.warmup_epochs, "startup_trials": args.startup_trials},
        "space": space,
    }


def run_strategy(
    ws: Path, params: dict[str, Any], strategy: str, seed: int, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    """``--trials`` trials of ``strategy``: each trial's value, state and epochs, the best, the epochs spent."""
    from optuna.trial import TrialState

    space = spaces(args)[strategy]
    search = search_section(strategy, space, seed, args)
    spec, name = str(ws / ".search" / f"{strategy}-{seed}.journal"), f"{strategy}-{seed}"
    study = studies.open_study(name, spec, direction="maximize", search=search, epochs=args.epochs)[0]
    trials, started = [], time.perf_counter()
    for _ in range(args.trials):
        trial = study.ask()
        values = suggest(trial, space)
        path = write_params(ws, params, **values, **{"train.seed": seed})
        shutil.rmtree(ws / "outputs" / "train", ignore_errors=True)
        os.environ[ENV] = json.dumps(
            {
                "storage": spec,
                "study": name,
                "trial_id": trial._trial_id,
                "number": trial.number,
                "pruner": search["pruner"],
                "epochs": args.epochs,
                "parent_run_id": None,
            }
        )
        try:
            run_stage(train_stage, path, log)
        finally:
            del os.environ[ENV]
        summary = json.loads((ws / outputs.TRAIN_SUMMARY).read_text())
        value = json.loads((ws / outputs.TRAIN_METRICS).read_text())[OBJECTIVE]
        trial.set_user_attr("epochs_run", summary["epochs_run"])
        studies.tell(study, trial, state=TrialState.PRUNED) if summary["pruned"] else studies.tell(study, trial, value)
        trials.append(
            {
                "number": trial.number,
                **values,
                "pruned": bool(summary["pruned"]),
                "epochs_run": int(summary["epochs_run"]),
                "value": float(value),
            }
        )
        if not args.quiet:
            print(
                f"  seed {seed} {strategy:10s} #{trial.number:<3d} lr={values['optimizer.lr']:.3g}: "
                f"{'pruned' if summary['pruned'] else 'complete'} after {summary['epochs_run']} epoch(s), "
                f"{OBJECTIVE} {value:.4f}",
                flush=True,
            )
    complete = [t for t in trials if not t["pruned"]]
    best = max(complete, key=lambda t: t["value"]) if complete else None
    return {
        "trials": trials,
        "best": best["value"] if best else math.nan,
        "best_lr": best["optimizer.lr"] if best else None,
        "epochs": sum(t["epochs_run"] for t in trials),
        "pruned": sum(t["pruned"] for t in trials),
        "wall_s": time.perf_counter() - started,
    }


def epochs_to_reach(trials: list[dict[str, Any]], target: float) -> int | None:
    """Epochs spent until a completed trial first scored at least ``target`` (None: never)."""
    spent = 0
    for t in trials:
        spent += t["epochs_run"]
        if not t["pruned"] and t["value"] >= target:
            return spent
    return None


# --- the whole run --------------------------------------------------------------------------------


def measure(args: argparse.Namespace, ws: Path) -> dict[str, Any]:
    (ws / "data").symlink_to(DATA, target_is_directory=True)
    log = ws / "stages.log"
    params = base_params(args)
    path = write_params(ws, params)
    for stage in (split_stage, decode_stage):
        run_stage(stage, path, log)
    manifest = json.loads((ws / outputs.MANIFEST).read_text())
    val_images = len(manifest["splits"]["val"])
    tolerance = args.tolerance if args.tolerance is not None else 1 / val_images
    by_seed: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        run_stage(model_stage, write_params(ws, params, **{"train.seed": seed}), log)  # init depends on the seed
        runs = {s: run_strategy(ws, params, s, seed, args, log) for s in STRATEGIES}
        grid_best, tpe = runs["grid"]["best"], runs["tpe+median"]
        reached = tpe["best"] >= grid_best - tolerance - EPS
        by_seed.append(
            {
                "seed": seed,
                **runs,
                "target": {
                    "reached_grid_best": reached,
                    "epochs_ratio": tpe["epochs"] / runs["grid"]["epochs"],
                    "met": reached and tpe["epochs"] <= runs["grid"]["epochs"] / 2,
                    "epochs_to_grid_best": {
                        s: epochs_to_reach(runs[s]["trials"], grid_best - tolerance - EPS) for s in STRATEGIES
                    },
                },
            }
        )
    return {
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "tolerance": tolerance,
            "val_images": val_images,
            "objective": OBJECTIVE,
            "data": str(DATA.relative_to(REPO)),
            "config": str(CONFIG.relative_to(REPO)),
            "grid": spaces(args)["grid"]["optimizer.lr"]["choices"],
        },
        "seeds": by_seed,
        "summary": summarise(by_seed, tolerance),
    }


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(by_seed: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Per strategy over seeds: best score mean, std, min, max; epochs mean and total; pruned trials."""
    out: dict[str, Any] = {}
    for s in STRATEGIES:
        best = [r[s]["best"] for r in by_seed]
        epochs = [r[s]["epochs"] for r in by_seed]
        out[s] = {
            "best_mean": statistics.fmean(best),
            "best_std": _spread(best),
            "best_min": min(best),
            "best_max": max(best),
            "epochs_mean": statistics.fmean(epochs),
            "epochs_total": sum(epochs),
            "trials": sum(len(r[s]["trials"]) for r in by_seed),
            "pruned": sum(r[s]["pruned"] for r in by_seed),
            "wall_s": sum(r[s]["wall_s"] for r in by_seed),
        }
    tpe, grid = out["tpe+median"], out["grid"]
    out["target"] = {
        "seeds_met": sum(r["target"]["met"] for r in by_seed),
        "seeds": len(by_seed),
        "mean_reached": tpe["best_mean"] >= grid["best_mean"] - tolerance - EPS,
        "mean_epochs_ratio": tpe["epochs_mean"] / grid["epochs_mean"],
        "met_on_means": tpe["best_mean"] >= grid["best_mean"] - tolerance - EPS
        and tpe["epochs_mean"] <= grid["epochs_mean"] / 2,
    }
    return out


def print_report(result: dict[str, Any]) -> None:
    st, summary, seeds = result["settings"], result["summary"], result["seeds"]
    print(
        f"\n{st['config']} on {st['data']} ({st['val_images']} val images), timm/{st['model']} at "
        f"{st['image_size']} px, {st['trials']} trials x {st['epochs']} epochs per strategy, "
        f"seeds 0..{st['seeds'] - 1}; "
        f"optimizer.lr log [{st['lr_low']:g}, {st['lr_high']:g}] (grid: {len(st['grid'])} log-spaced values); "
        f"objective {st['objective']} (best completed trial)"
    )
    print(
        f"\n| strategy | best {st['objective'].removeprefix('best_')} mean ± std | min - max | "
        "epochs per seed (mean) | pruned trials | wall s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in STRATEGIES:
        r = summary[s]
        print(
            f"| {s} | {r['best_mean']:.3f} ± {r['best_std']:.3f} | {r['best_min']:.3f} - {r['best_max']:.3f} | "
            f"{r['epochs_mean']:.1f} | {r['pruned']}/{r['trials']} | {r['wall_s']:.0f} |"
        )
    print(f"\nper seed (tolerance {st['tolerance']:.3f} = one val image unless --tolerance):")
    for r in seeds:
        t = r["target"]
        reach = ", ".join(
            f"{s} {t['epochs_to_grid_best'][s] if t['epochs_to_grid_best'][s] is not None else 'never'}"
            for s in STRATEGIES
        )
        print(
            f"  seed {r['seed']}: best "
            + ", ".join(
                f"{s} {r[s]['best']:.3f} (lr {r[s]['best_lr']:.3g})" if r[s]["best_lr"] else f"{s} none"
                for s in STRATEGIES
            )
            + f"; epochs tpe/grid {r['tpe+median']['epochs']}/{r['grid']['epochs']} = {t['epochs_ratio']:.2f}; "
            f"epochs until the grid's best (- tol): {reach}; target {'met' if t['met'] else 'NOT met'}"
        )
    tg = summary["target"]
    print(
        f"\ntarget (tpe+median reaches the grid's best within {st['tolerance']:.3f} with <= half its epochs): "
        f"met on {tg['seeds_met']}/{tg['seeds']} seeds; on the means: best "
        f"{summary['tpe+median']['best_mean']:.3f} vs {summary['grid']['best_mean']:.3f} "
        f"({'reached' if tg['mean_reached'] else 'not reached'}), epochs ratio {tg['mean_epochs_ratio']:.2f} "
        f"-> {'MET' if tg['met_on_means'] else 'NOT MET'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        result = measure(args, Path(tmp))
    result["settings"]["wall_s"] = time.perf_counter() - started
    print_report(result)
    print(f"total wall time {result['settings']['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
