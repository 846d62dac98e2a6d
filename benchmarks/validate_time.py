"""What validating costs: ``python -m pipeline validate`` against ``python -c "import torch"``, and
what each stage imports before it starts its work.

In one run, each command is a fresh process (warm file cache, so start-up is what is measured):

  (a) ``python -c "import torch"``: the yardstick (the issue's target: validate within 2x of it);
  (b) ``python -m pipeline validate`` on the shipped params.yaml (U-Net segmentation);
  (c) the same on configs/classification.yaml (a timm classifier; copied into a temp folder whose
      data/ and weights/ link to the repository's, so its relative paths resolve);

and, as the floor of (b) and (c), a process that only imports the libraries building their declared
components loads (torch.optim's Optimizer imports torch._dynamo; imgaug; timm). ``--repeats`` rounds
of all of them in turn (a busy host slows each alike; ``--compare`` adds another checkout's (b) and (c)
to the same rounds); each reports its median wall time, its CPU time (steadier than wall time on a
shared host), their ratios to (a)'s, and its peak RSS (``wait4``).
Then, for each stage module, one process imports it and runs the stage runner's validation
(``run_stage`` with a body that does nothing) on params.yaml: which heavy libraries are then in
``sys.modules``, how many modules, peak RSS.

    python benchmarks/validate_time.py                      # 5 rounds
    python benchmarks/validate_time.py --repeats 9 --json r.json
    python benchmarks/validate_time.py --compare /path/to/a/copy/before/the/change

Not a test (timings depend on the machine); tests/test_imports.py guards what is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HEAVY = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "timm",
    "imgaug",
    "scipy",
    "sympy",
    "numba",
    "cv2",
    "skimage",
    "mlflow",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "huggingface_hub",
    "safetensors",
    "sqlalchemy",
    "pandas",
    "PIL.Image",
    "numpy",
    "jsonschema",
)

# Imports a stage and validates as its runner does, without the stage's work; prints what is loaded.
_STAGE_PROBE = """
import importlib, json, sys
stage = importlib.import_module("stages." + sys.argv[1])
from pipeline.stage import run_stage
status = run_stage(sys.argv[1], stage.PARAMS, lambda view: None, ["--params", sys.argv[2]])
heavy = json.loads(sys.argv[3])
print(json.dumps({"status": status, "modules": len(sys.modules), "heavy": [m for m in heavy if m in sys.modules]}))
"""


def run(argv: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system), peak RSS (MiB) and stdout of one process (its own
    rusage, via wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read()


def classification_params(root: Path, tmp: Path) -> Path:
    """configs/classification.yaml in a folder where its relative data/ and weights/ resolve."""
    folder = tmp / "classification"
    folder.mkdir(parents=True)
    shutil.copy(root / "configs" / "classification.yaml", folder / "params.yaml")
    for name in ("data", "weights"):
        (folder / name).symlink_to((root / name).resolve(), target_is_directory=True)
    return folder / "params.yaml"


def commands(root: Path, tmp: Path, tag: str = "") -> dict[str, tuple[list[str], Path]]:
    """The validate commands for the checkout ``root`` (labels end with ``tag``)."""
    py = sys.executable
    cls = classification_params(root, tmp / (tag.strip(" []") or "this"))
    return {
        f"validate params.yaml{tag}": ([py, "-m", "pipeline", "validate", "params.yaml"], root),
        f"validate classification.yaml{tag}": ([py, "-m", "pipeline", "validate", str(cls)], root),
    }


def time_all(root: Path, compare: Path | None, repeats: int, tmp: Path) -> dict[str, Any]:
    """Median wall time and peak RSS of each command, over ``repeats`` interleaved rounds."""
    py = sys.executable
    todo = {
        "import torch": ([py, "-c", "import torch"], root),
        # what building the declared components must load (torch.optim's Optimizer imports
        # torch._dynamo), without the pipeline: validate's floor for each file
        "import torch, torch._dynamo, imgaug": ([py, "-c", "import torch, torch._dynamo, imgaug.augmenters"], root),
        "  ... and timm": ([py, "-c", "import torch, torch._dynamo, imgaug.augmenters, timm"], root),
        **commands(root, tmp),
    }
    if compare is not None:
        todo.update(commands(compare, tmp, f" [{compare.name}]"))
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in todo}
    for argv, cwd in todo.values():  # one unmeasured round: page cache, .pyc files
        run(argv, cwd)
    for _ in range(repeats):
        for name, (argv, cwd) in todo.items():
            wall, cpu, rss, _ = run(argv, cwd)
            samples[name].append((wall, cpu, rss))
    out = {
        name: {
            "median_s": statistics.median(w for w, _, _ in values),
            "min_s": min(w for w, _, _ in values),
            "cpu_s": statistics.median(c for _, c, _ in values),
            "peak_rss_mib": statistics.median(r for _, _, r in values),
        }
        for name, values in samples.items()
    }
    for name in out:
        out[name]["x_import_torch"] = out[name]["median_s"] / out["import torch"]["median_s"]
        out[name]["cpu_x_import_torch"] = out[name]["cpu_s"] / out["import torch"]["cpu_s"]
    return out


def stage_imports(root: Path) -> dict[str, Any]:
    """What each stage of dvc.yaml (that ``root`` has) loads before its work."""
    import yaml

    out = {}
    for spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        stage = spec["cmd"].split()[-1].removeprefix("stages.")
        if not (root / "stages" / f"{stage}.py").is_file():
            continue
        wall, _, rss, text = run([sys.executable, "-c", _STAGE_PROBE, stage, "params.yaml", json.dumps(HEAVY)], root)
        out[stage] = {**json.loads(text.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_mib": rss}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--compare", type=Path, help="another checkout (say, a copy from before a change), measured in the same rounds"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    compare = args.compare.resolve() if args.compare else None
    with tempfile.TemporaryDirectory() as tmp:
        timing = time_all(REPO, compare, args.repeats, Path(tmp))
    stages = {root: stage_imports(root) for root in (REPO, compare) if root is not None}
    print(
        f"{args.repeats} interleaved rounds, medians: wall (min) and its ratio to import torch's, CPU time "
        "(user + system) and its ratio, peak RSS"
    )
    for name, r in timing.items():
        print(
            f"  {name:40s} {r['median_s']:5.2f} s ({r['min_s']:.2f}) {r['x_import_torch']:4.2f}x  "
            f"cpu {r['cpu_s']:5.2f} s {r['cpu_x_import_torch']:4.2f}x  {r['peak_rss_mib']:5.0f} MiB"
        )
    for root, found in stages.items():
        print(f"{root}: each stage module + its runner's validation (an empty body) on params.yaml:")
        for stage, r in found.items():
            print(
                f"  {stage:9s} {r['wall_s']:5.2f} s {r['peak_rss_mib']:5.0f} MiB {r['modules']:5d} modules  "
                f"heavy: {', '.join(r['heavy']) or '-'}"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"validate": timing, "stages": {str(k): v for k, v in stages.items()}}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
