"""The DDP plumbing in pipeline.training.distributed, without launching anything: devices checked
against the torchrun launch, samplers that split the data without overlap, SyncBatchNorm refused on
CPU, and the train keys it reads validated. Real 2-rank runs are in tests/stages/test_distributed.py."""

from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.config.errors import ConfigError, PipelineError
from pipeline.config.params import load_params
from pipeline.training import distributed
from tests.conftest import REPO, write_params


def test_check_devices_against_the_launch():
    distributed.check_devices("auto", {})
    distributed.check_devices(1, {})
    distributed.check_devices(2, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})  # 2 nodes x 2
    with pytest.raises(PipelineError, match="--nproc_per_node=3"):
        distributed.check_devices(3, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})


def test_samplers_split_without_overlap():
    ctxs = [distributed.Context(rank=r, local_rank=r, world_size=3) for r in range(3)]
    shards = [list(distributed.eval_sampler(range(10), c)) for c in ctxs]
    assert sorted(i for shard in shards for i in shard) == list(range(10))  # every validation sample exactly once
    samplers = [distributed.train_sampler(range(10), c, seed=1) for c in ctxs]
    for epoch in (0, 1):
        parts = []
        for s in samplers:
            s.set_epoch(epoch)
            parts.append(list(s))
        flat = [i for part in parts for i in part]
        assert len(flat) == 9 and len(set(flat)) == 9
    assert distributed.train_sampler(range(10), distributed.SINGLE, seed=1) is None


def test_sync_batchnorm_on_cpu_is_refused():
    ctx = distributed.Context(rank=0, local_rank=0, world_size=2)
    with pytest.raises(PipelineError, match=r"train\.sync_batchnorm needs CUDA"):
        distributed.wrap_model(torch.nn.BatchNorm2d(2), ctx, torch.device("cpu"), sync_batchnorm=True)


def test_new_train_keys_are_validated(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["train"]["devices"] == "auto"
    path = write_params(tmp_path / "params.yaml", **{"train.devices": 0})
    with pytest.raises(ConfigError, match=r"train\.devices"):
        load_params(path, semantic=False)
