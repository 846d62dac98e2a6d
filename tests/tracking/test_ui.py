"""What the MLflow UI shows of the pipeline's runs, checked through what MLflow returns: the experiment's
kind, the link's view, the split as the run's dataset, artifacts the compare view has in common, and
metrics that are measurements only. Two whole pipeline runs (split, augment, model, train, evaluate)
go into a real `mlflow server`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.tracking import run as tracking
from pipeline.tracking import store as tracking_store
from tests.conftest import TRAIN, make_workspace

MLFLOW_JS = Path(__import__("mlflow").__file__).parent / "server/js/build/static/js"

# Where each file of a pipeline run lands: the run's root, one name each (the compare view's level).
ROOT_ARTIFACTS = {
    "history.csv",
    "history.png",
    "params.resolved.yaml",
    "augment_preview.png",
    "test_metrics.json",
    "test_summary.json",
    "confusion.csv",
    "confusion.png",
    "per_class.csv",
    "overlays.png",
}


def _cfg(uri: str, experiment: str) -> dict:
    return {"enabled": True, "uri": uri, "experiment": experiment, "run_name": None}


def _bundle() -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in MLFLOW_JS.glob("*.js"))


def test_the_names_we_write_are_the_ones_the_installed_ui_reads():
    """The UI's names live in its JavaScript only; a new MLflow that renames them fails here."""
    from mlflow.utils import mlflow_tags

    js = _bundle()
    assert f'"{tracking.EXPERIMENT_KIND_TAG}"' in js
    assert f'CUSTOM_MODEL_DEVELOPMENT="{tracking.EXPERIMENT_KIND}"' in js
    key, value = tracking_store.UI_VIEW_QUERY.split("=")
    assert f'e.get("{key}")' in js and f'MACHINE_LEARNING="{value}"' in js
    assert "No common artifacts to display." in js
    assert tracking.DATASET_CONTEXT_TAG == mlflow_tags.MLFLOW_DATASET_CONTEXT


def test_experiments_are_model_training_ones_unless_someone_chose_a_kind(store):
    uri = tracking_store.resolve_tracking_uri("sqlite:///mlflow.db", store)
    client = MlflowClient(uri)
    kind = tracking.EXPERIMENT_KIND_TAG
    old = client.create_experiment("ui-untyped")  # made before the pipeline set kinds
    chosen = client.create_experiment("ui-genai", tags={kind: "genai_development"})
    for name in ("ui-new", "ui-untyped", "ui-genai"):
        tracking.start_run(_cfg("sqlite:///mlflow.db", name), repo_root=store).end()
    assert client.get_experiment_by_name("ui-new").tags[kind] == "custom_model_development"
    assert client.get_experiment(old).tags[kind] == "custom_model_development"
    assert client.get_experiment(chosen).tags[kind] == "genai_development"


def test_the_printed_link_opens_the_model_training_view(store, capsys):
    """The 3.17 UI reads the view from ``?workflowType=`` (else a per-browser switch that starts on
    GenAI), not from the experiment's kind: a new run prints its experiment's page with it."""
    run = tracking.start_run(_cfg("sqlite:///mlflow.db", "ui-link"), repo_root=store)
    run.end()
    page = f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}?workflowType=machine_learning"
    out = capsys.readouterr().out
    assert f"({run.run_id}); MLflow UI: {page} (after: mlflow ui --backend-store-uri {run.uri})" in out
    assert (
        tracking_store.ui_link("http://host:5000", "7")
        == "http://host:5000/#/experiments/7?workflowType=machine_learning"
    )
    tracking.start_run(_cfg("sqlite:///mlflow.db", "ui-link"), repo_root=store, run_id=run.run_id).end()
    assert "MLflow UI" not in capsys.readouterr().out  # evaluate, resuming the run, says nothing


# --- two pipeline runs on a real server -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shapes_dataset, mlflow_server) -> list[tuple[str, Path]]:
    """(run id, workspace) of two whole pipeline runs that differ in the learning rate."""
    from stages import evaluate as evaluate_stage
    from stages import preview as preview_stage
    from stages import train as train_stage

    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("DVC_EXP_NAME", raising=False)
        for lr in (0.01, 0.003):
            root = tmp_path_factory.mktemp("pipeline")
            params = make_workspace(
                root,
                dataset=shapes_dataset,
                stages=("split", "augment", "model"),
                **{
                    **TRAIN,
                    "train.epochs": 2,
                    "optimizer.lr": lr,
                    "tracking.enabled": True,
                    "tracking.uri": mlflow_server.uri,
                    "tracking.experiment": "ui-pipeline",
                },
            )
            assert train_stage.main(["--params", str(params)]) == 0
            assert preview_stage.main(["--params", str(params)]) == 0  # attaches augment_preview.png
            assert evaluate_stage.main(["--params", str(params)]) == 0
            runs.append((json.loads((root / "outputs/train/run.json").read_text())["run_id"], root))
    return runs


@pytest.mark.slow
def test_the_pipelines_experiment_is_a_model_training_one(two_runs, mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui-pipeline")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert {client.get_run(r).info.experiment_id for r, _ in two_runs} == {experiment.experiment_id}


@pytest.mark.slow
def test_the_split_is_the_runs_dataset(two_runs, mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    (_, first_root), _ = two_runs
    for run_id, root in two_runs:
        manifest = json.loads((root / "outputs/split/manifest.json").read_text())
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert len(inputs) == 1  # once per run, by train
        dataset = inputs[0].dataset
        root_as_written = yaml.safe_load((root / "params.yaml").read_text())["data"]["root"]
        assert dataset.name == manifest["root"] == root_as_written
        # MLflow keeps 36 characters of a digest (MAX_DATASET_DIGEST_SIZE); the profile has all 64
        assert dataset.digest == manifest["fingerprint"][:36] and len(manifest["fingerprint"]) == 64
        assert json.loads(dataset.profile) == {"fingerprint": manifest["fingerprint"]}
        # one dataset per experiment, name and digest: the same data is one entity, found first here
        assert (dataset.source_type, json.loads(dataset.source)) == ("local", {"uri": str(first_root / "data")})
        assert {t.key: t.value for t in inputs[0].tags} == {
            "mlflow.data.context": "train",
            "task": "segmentation",
            "num_classes": str(manifest["num_classes"]),
            **{f"split.{s}": str(len(manifest["splits"][s])) for s in ("train", "val", "test")},
        }


def _ui_artifact_list(uri: str, run_id: str) -> list[dict]:
    """What the compare view asks the server for: the run's root listing (ajax-api artifacts/list,
    run_uuid only; mlflow/server/js, the "No common artifacts" component)."""
    with urllib.request.urlopen(f"{uri}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}") as response:
        return json.load(response).get("files", [])


@pytest.mark.slow
def test_two_runs_have_common_artifacts_in_the_compare_view(two_runs, mlflow_server):
    """The compare view shows the root files (not folders) of the first run that every other run has too."""
    (first, _), (second, _) = two_runs
    common = [f["path"] for f in _ui_artifact_list(mlflow_server.uri, first) if not f.get("is_dir")]
    common = [p for p in common if p in {f["path"] for f in _ui_artifact_list(mlflow_server.uri, second)}]
    assert set(common) == ROOT_ARTIFACTS
    client = MlflowClient(mlflow_server.uri)
    # predict --model runs:/ID fetches the weights from their own folder
    assert [a.path for a in client.list_artifacts(first, "weights")] == ["weights/best.safetensors"]
    assert {a.path for a in client.list_artifacts(first) if a.is_dir} == {"weights"}


@pytest.mark.slow
def test_only_measurements_are_metrics(two_runs, mlflow_server):
    """Losses, scores, the learning rate per epoch and the throughput are charted; counts and epoch
    numbers are tags."""
    client = MlflowClient(mlflow_server.uri)
    for run_id, root in two_runs:
        run = client.get_run(run_id)
        evaluated = json.loads((root / "outputs/evaluate/metrics.json").read_text())
        trained = json.loads((root / "outputs/train/metrics.json").read_text())
        record = json.loads((root / "outputs/train/summary.json").read_text())
        tested = json.loads((root / "outputs/evaluate/summary.json").read_text())
        assert not {"test_images", "epochs_run", "best_epoch", "stopped_early"} & set(run.data.metrics)
        assert (
            run.data.tags["test_images"]
            == str(tested["images"])
            == str(len(json.loads((root / "outputs/split/manifest.json").read_text())["splits"]["test"]))
        )
        assert run.data.tags["epochs_run"] == "2" and run.data.tags["stopped_early"] == "false"
        assert run.data.tags["best_epoch"] == str(record["best_epoch"])
        best = client.get_metric_history(run_id, "best_val_dice")
        assert [(m.step, m.value) for m in best] == [(record["best_epoch"], pytest.approx(trained["best_val_dice"]))]
        per_epoch = {
            "train_loss",
            "val_loss",
            "val_dice",
            "val_iou",
            "val_pixel_accuracy",
            "lr",
            "images_per_s",
            "data_wait",
        }
        tested = {k if k.startswith("test_") else f"test_{k}" for k, v in evaluated.items() if isinstance(v, float)}
        per_class = json.loads((root / "outputs/evaluate/summary.json").read_text())["per_class"]
        # the per-class scores dvc exp show leaves out (summary.json) are charted in MLflow, <score>/<class>
        tested |= {f"test_{score}/{name}" for name, row in per_class.items() for score in row}
        measured = {k for k in run.data.metrics if not k.startswith("system/")}  # MLflow's own, sampled
        assert measured == per_epoch | tested | {"best_val_dice"}
        for key in per_epoch:
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
