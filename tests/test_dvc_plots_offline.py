"""`dvc plots show` draws every chart with no network, for both tasks, and warns about nothing.

A temporary DVC repository gets the project's dvc.yaml, params.yaml, .dvc/config (its
plots.html_template), .dvc/plots/ (the custom vega templates) and plots/ (the page and the vendored
vega), and the plot files a run writes, made by the project's own code (history.csv and validation.csv
from the rows validation produces, for the task's real metric names). ``dvc plots show`` writes
dvc_plots/index.html; headless Chromium, with every host name unresolvable and a dead proxy, renders
it, and the rendered DOM must hold each chart's SVG marks. A control renders DVC's own page (vega from
a CDN) the same way and must draw nothing, so the network really is off. Without Chromium only the
rendering tests skip (.ci/run installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline import outputs
from pipeline.training.evaluation import per_class_csv
from pipeline.training.history import history_csv, validation_csv
from pipeline.training.metrics import SUMMARIES, split_per_class
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium), so the page "
    "`dvc plots show` writes cannot be rendered offline",
)

CLASSES = {"segmentation": ["background", "shape"], "classification": ["circle", "square", "triangle"]}
# The div ids DVC gives the charts (dvc.yaml's top-level plots, the evaluate stage's confusion.csv),
# with the series each line chart draws; "validation" draws one per val_* score of the task.
LINES = {"loss": {"train_loss", "val_loss"}, "learning_rate": {"lr"}}
CONFUSION = "outputs_evaluate_confusion_csv"
PER_CLASS = "outputs_evaluate_per_class_csv"
URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def task_scores(task: str) -> dict[str, float]:
    """``task``'s metrics, as the meter computes them, of a confusion matrix with some of each class wrong."""
    k = len(CLASSES[task])
    return SUMMARIES[task](torch.eye(k, dtype=torch.int64) * 5 + 1, CLASSES[task])


def val_scores(task: str) -> list[str]:
    """The validation columns of ``task``'s history, named as the train loop's ``validate`` names them."""
    return [f"val_{key}" for key in task_scores(task) if "/" not in key]


def write_run_outputs(repo: Path, task: str, epochs: int = 4) -> None:
    """The plot files a finished run leaves (cache: false ones and the cached confusion.csv alike)."""
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "train_loss": 1.0 / epoch}
        row |= {key: 0.5 + 0.1 * epoch - 0.01 * i for i, key in enumerate(val_scores(task))}
        rows.append(row | {"val_loss": 1.2 / epoch, "lr": 0.01 * 0.5**epoch, "images_per_s": 250.0})
    (repo / outputs.TRAIN).mkdir(parents=True)
    (repo / outputs.TRAIN_HISTORY).write_text(history_csv(rows))
    (repo / outputs.TRAIN_VALIDATION).write_text(validation_csv(rows))
    names = CLASSES[task]
    pairs = [(a, p) for a in names for p in names] + [(n, n) for n in names] * 3
    (repo / outputs.EVALUATE).mkdir(parents=True)
    if task == "classification":  # evaluate's two layouts: one row per image, or sampled pixels
        lines = ["image,actual,predicted"] + [f"test/{i}.png,{a},{p}" for i, (a, p) in enumerate(pairs)]
    else:
        lines = ["actual,predicted"] + [f"{a},{p}" for a, p in pairs]
    (repo / outputs.EVALUATE_CONFUSION_CSV).write_text("\n".join(lines) + "\n")
    (repo / outputs.EVALUATE_PER_CLASS).write_text(per_class_csv(split_per_class(task_scores(task))[1]))
    for png in (outputs.EVALUATE_CONFUSION_PNG, outputs.EVALUATE_OVERLAYS):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(repo / png)


def make_repo(root: Path, task: str) -> Path:
    repo = root / task
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "plots", repo / "plots")
    _run(repo, "git", "init", "-q")
    _run(repo, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")
    write_run_outputs(repo, task)
    return repo


def render(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after Chromium ran its scripts, with no way to reach any host."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",  # the network, off
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-3000:]
    return result.stdout


@dataclass
class Chart:
    lines: list[str] = field(default_factory=list)  # each line mark's aria-label (its first point)
    rects: int = 0  # drawn rect marks (the confusion cells)
    bars: list[str] = field(default_factory=list)  # each bar mark's aria-label (its fields and values)
    texts: list[str] = field(default_factory=list)  # axis, legend and title text

    def drew(self, series: str) -> bool:
        """Whether a line of ``series`` is drawn: its marks' labels name it as the field or metric of
        several, or as the y field of a lone one."""
        name = re.escape(series)
        return any(re.search(rf"(?:^|; )(?:(?:field|metric): {name}(?:;|$)|{name}: )", label) for label in self.lines)


class Charts(HTMLParser):
    """Every vega chart in a rendered DOM (an ``svg.marks`` under a ``div`` with an id), what it drew,
    the attributes that load or link something, and the "vega did not load" notes."""

    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    )

    def __init__(self, dom: str):
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.charts: dict[str, Chart] = {}
        self.links: list[str] = []
        self.missing = 0
        self.feed(dom)

    def _chart(self) -> Chart | None:
        ids = [attrs.get("id") for tag, attrs in self.stack if tag == "div" and attrs.get("id")]
        inside = any(tag == "svg" and "marks" in attrs.get("class", "").split() for tag, attrs in self.stack)
        return self.charts.setdefault(ids[-1], Chart()) if ids and inside else None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.links += [v for k, v in a.items() if k in ("src", "href", "srcset", "poster", "data")]
        self.missing += "missing-vega" in a.get("class", "").split()
        if tag not in self.VOID:
            self.stack.append((tag, a))
        chart = self._chart()
        if chart is not None and tag == "path" and a.get("d"):
            kind = a.get("aria-roledescription", "")
            if kind == "line mark":
                chart.lines.append(a.get("aria-label", ""))
            elif kind == "rect mark":
                chart.rects += 1
            elif kind == "bar":
                chart.bars.append(a.get("aria-label", ""))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        chart = self._chart()
        if chart is not None and self.stack[-1][0] == "text" and data.strip():
            chart.texts.append(data.strip())


@dataclass
class Shown:
    task: str
    repo: Path
    output: str  # what `dvc plots show` printed
    html: str  # dvc_plots/index.html as written


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plots")
    return {task: make_repo(root, task) for task in CLASSES}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def shown(request, repos) -> Shown:
    repo = repos[request.param]
    result = _run(repo, sys.executable, "-m", "dvc", "plots", "show")
    return Shown(request.param, repo, result.stdout + result.stderr, (repo / "dvc_plots" / "index.html").read_text())


@pytest.fixture(scope="module")
def rendered(shown, tmp_path_factory) -> Charts:
    if CHROMIUM is None:
        pytest.skip(needs_chromium.kwargs["reason"])
    return Charts(render(shown.repo / "dvc_plots" / "index.html", tmp_path_factory.mktemp("chromium")))


def test_validation_csv_holds_every_score_but_the_loss():
    rows = [
        {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.5, "val_macro_f1": 0.25, "val_loss": 0.8, "lr": 0.1},
        {"epoch": 2, "train_loss": 0.7, "val_accuracy": 0.75, "val_macro_f1": 0.5, "val_loss": 0.6, "lr": 0.1},
    ]
    assert validation_csv(rows) == (
        "epoch,metric,value\n1,val_accuracy,0.5\n1,val_macro_f1,0.25\n2,val_accuracy,0.75\n2,val_macro_f1,0.5\n"
    )


@pytest.mark.slow
def test_plots_show_warns_about_nothing(shown):
    """No "could not find provided field": every plot's fields exist in both tasks' files."""
    text = shown.output.lower()
    assert "warning" not in text and "error" not in text and "failed" not in text, shown.output


@pytest.mark.slow
def test_the_page_loads_nothing_from_the_network(shown):
    assert not URL.search(shown.html), URL.search(shown.html)
    assert "cdn." not in shown.html
    scripts = re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", shown.html)
    assert len(scripts) == 3, scripts  # vega, vega-lite, vega-embed
    for script in scripts:
        found = (shown.repo / "dvc_plots" / script).resolve()
        assert found.is_file() and found.stat().st_size < 1_000_000, script
        assert found.is_relative_to((shown.repo / "plots" / "vendor").resolve()), script


@pytest.mark.slow
def test_the_confusion_matrix_is_shown_once(shown):
    """confusion.csv is the plot; confusion.png is an output only, not a second drawing of it."""
    assert "confusion.png" not in shown.html
    assert len(re.findall(r"<img\b", shown.html)) == 1  # overlays.png


@pytest.mark.slow
@needs_chromium
def test_every_chart_draws_offline(shown, rendered):
    charts = rendered.charts
    embedded = re.findall(r"vegaEmbed\('#([^']+)'", shown.html)
    assert sorted(embedded) == sorted([*LINES, "validation", CONFUSION, PER_CLASS]), embedded
    assert sorted(charts) == sorted(embedded), f"drawn {sorted(charts)}, on the page {sorted(embedded)}"
    assert rendered.missing == 0
    for name, series in LINES.items():
        assert all(charts[name].drew(s) for s in series), (name, charts[name].lines)
    scores = val_scores(shown.task)
    validation = charts["validation"]
    assert len(validation.lines) == len(scores), validation.lines  # one line per score, no other
    assert all(validation.drew(s) for s in scores), validation.lines
    assert set(scores) <= set(validation.texts)  # the legend names them
    confusion = charts[CONFUSION]
    assert confusion.rects >= len(CLASSES[shown.task]) ** 2, confusion
    assert set(CLASSES[shown.task]) <= set(confusion.texts), confusion.texts
    per_class = charts[PER_CLASS]  # one bar per class and score, the classes on the axis, the scores in the legend
    table = split_per_class(task_scores(shown.task))[1]
    drawn = {(m["class"], m["metric"]) for m in (dict(re.findall(r"(\w+): ([^;]+)", bar)) for bar in per_class.bars)}
    assert len(per_class.bars) == len(drawn) == sum(map(len, table.values())), per_class.bars
    assert drawn == {(name, metric) for name, row in table.items() for metric in row}
    assert set(table) | {metric for row in table.values() for metric in row} <= set(per_class.texts), per_class.texts


@pytest.mark.slow
@needs_chromium
def test_the_rendered_page_links_nothing_remote(rendered):
    remote = [link for link in rendered.links if re.match(r"\s*(https?:)?//", link, re.IGNORECASE)]
    assert not remote, remote


@pytest.mark.slow
@needs_chromium
def test_a_page_without_the_vendored_vega_says_so(repos, tmp_path):
    """Opened from elsewhere (here `-o` one folder deeper) the scripts are not found: each chart's place
    says why instead of staying blank."""
    repo = repos["segmentation"]
    _run(repo, sys.executable, "-m", "dvc", "plots", "show", "-o", "deeper/dvc_plots")
    charts = Charts(render(repo / "deeper" / "dvc_plots" / "index.html", tmp_path / "profile"))
    assert charts.missing == len(LINES) + 3 and not charts.charts


@pytest.mark.slow
@needs_chromium
def test_the_control_dvcs_own_cdn_page_draws_nothing(repos, tmp_path):
    """DVC's default page (vega from cdn.jsdelivr.net) must fail under the same Chromium flags; else
    the tests above would pass with the network on."""
    from dvc_render.html import PAGE_HTML

    repo = repos["segmentation"]
    template = tmp_path / "cdn.html"
    template.write_text(PAGE_HTML)
    _run(repo, sys.executable, "-m", "dvc", "plots", "show", "-o", "cdn_plots", "--html-template", str(template))
    assert "cdn.jsdelivr.net" in (repo / "cdn_plots" / "index.html").read_text()
    assert not Charts(render(repo / "cdn_plots" / "index.html", tmp_path / "profile")).charts
