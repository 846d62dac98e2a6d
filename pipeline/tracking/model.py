"""The trained model in MLflow: logged with the run as an MLflow Model (pyfunc, from code: see
:mod:`pipeline.inference.pyfunc_model`), optionally registered, and fetched back for predict.

The run holds the model file twice over: as the ``weights`` artifact of the MLflow Model ``model``
(what ``mlflow.pyfunc.load_model("runs:/<id>/model")`` and ``mlflow models serve`` use) and as the
run artifact ``weights/best.safetensors`` (what ``python -m pipeline predict --model runs:/<id>`` fetches).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config.errors import PipelineError

MODEL_NAME = "model"
WEIGHTS_ARTIFACT = "weights/best.safetensors"
PACKAGE = Path(__file__).resolve().parents[1]  # pipeline/: carried in the model's code paths
SCHEMAS = PACKAGE.parent / "schemas"  # beside it there: loading checks the recipe against them
PYFUNC_CODE = PACKAGE / "inference" / "pyfunc_model.py"


def signature_and_example(weights: Path) -> tuple[Any, Any]:
    """The model's signature (uint8 RGB images of any size in; probabilities or masks out) and an
    input example of the model's own image size."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from pipeline.models.file import ModelInfo, read_recipe

    info = ModelInfo.from_recipe(read_recipe(weights), [])
    height, width = info.image_hw
    # Unnamed tensors: the model takes and returns plain arrays ({"inputs": [...]} over HTTP).
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
    if info.task in ("classification", "multilabel"):
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classes)))])
    else:
        outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))])
    example = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    return ModelSignature(inputs=inputs, outputs=outputs), example


def log_pyfunc(uri: str, run_id: str, weights: Path, *, register_as: str | None = None) -> str:
    """Log ``weights`` into run ``run_id`` as the MLflow Model ``model`` (and the plain weights
    artifact); register a model version named ``register_as`` when given. Returns the model URI."""
    import mlflow

    signature, example = signature_and_example(weights)
    # mlflow's fluent API logs models; it keeps the store in a global and in MLFLOW_TRACKING_URI, and
    # both must be as they were afterwards (evaluate, in this process or a child, resolves its own).
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(weights), os.path.dirname(WEIGHTS_ARTIFACT))
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(PYFUNC_CODE),
                artifacts={"weights": str(weights)},
                code_paths=[str(PACKAGE), str(SCHEMAS)],
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                registered_model_name=register_as,
            )
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets the global and the variable
    return info.model_uri


def _requirements() -> list[str]:
    """What the model needs to load, pinned to what trained it (an env manager other than local
    installs these)."""
    from importlib.metadata import PackageNotFoundError, version

    needed = []
    for name in ("torch", "torchvision", "timm", "imaug", "numpy", "pillow", "safetensors", "mlflow"):
        try:
            needed.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            needed.append(name)
    return needed


def local_weights(model: str, *, repo_root: Path | None = None) -> Path:
    """A model file for ``--model``: a path as given, or ``runs:/<run id>`` fetched from the tracking
    store (``MLFLOW_TRACKING_URI``, else the default ``sqlite:///mlflow.db`` of this repository)."""
    if not model.startswith("runs:/"):
        path = Path(model)
        if not path.is_file():
            raise PipelineError(f"--model {model}: no such model file (train writes outputs/train/best.safetensors)")
        return path
    from pipeline.tracking.store import ENV_URI, resolve_tracking_uri, sqlite_path

    run_id = model.removeprefix("runs:/").strip("/").split("/")[0]
    uri = resolve_tracking_uri("sqlite:///mlflow.db", repo_root or Path.cwd())
    store = sqlite_path(uri)
    if store is not None and not store.is_file():  # MLflow would create an empty store to look in
        raise PipelineError(
            f"--model {model}: no tracking store at {store} (run where params.yaml is, or set "
            f"{ENV_URI} to the store that holds the run)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=WEIGHTS_ARTIFACT, tracking_uri=uri)
        )
    except (MlflowException, OSError) as exc:
        raise PipelineError(
            f"--model {model}: cannot fetch {WEIGHTS_ARTIFACT} from the run in {uri} ({getattr(exc, 'message', exc)})"
        ) from None
