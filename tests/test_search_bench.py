"""benchmarks/search_bench.py at its smallest (2 trials x 1 epoch x 1 seed, 8 px): every strategy runs
its trials through the train stage and the table reports each with finite numbers."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import search_bench


@pytest.mark.slow
def test_search_bench_smoke(tmp_path, capsys):
    out = tmp_path / "search.json"
    assert (
        search_bench.main(
            ["--trials", "2", "--epochs", "1", "--seeds", "1", "--image-size", "8", "--quiet", "--json", str(out)]
        )
        == 0
    )
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    for strategy in ("tpe+median", "random", "grid"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {strategy} |"))
        assert "nan" not in row
        summary = result["summary"][strategy]
        assert math.isfinite(summary["best_mean"]) and 0 <= summary["best_mean"] <= 1
        assert summary["epochs_mean"] == 2 and summary["trials"] == 2  # 1 epoch each, nothing pruned at epoch 1
    assert result["settings"]["grid"] == [0.0001, 0.1]  # the grid: --trials log-spaced values of the lr range
    assert {t["optimizer.lr"] for t in result["seeds"][0]["grid"]["trials"]} == {0.0001, 0.1}
