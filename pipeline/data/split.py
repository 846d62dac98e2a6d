"""Splitting a dataset: scan the files once (:mod:`pipeline.data.scan`), assign each to train/val/test
(:mod:`pipeline.data.assign`), check for leaks (:mod:`pipeline.data.leakage`), and describe the result
as a manifest (see :class:`pipeline.data.manifest.Manifest`).

The same seed and the same files give a byte-identical manifest. Classification is stratified (each
class dealt into the splits in proportion), multilabel iteratively (:mod:`pipeline.data.iterative`); every file lands in exactly one split, and with
``split.group_by`` every group in exactly one split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.errors import PipelineError, Problem
from pipeline.config.params import Params
from pipeline.data.assign import assign, assign_folds, assign_groups, fraction_problem, group_by_problem, group_keys
from pipeline.data.files import check_mask_classes, segmentation_class_names, several
from pipeline.data.leakage import cross_split_duplicates, pair_names
from pipeline.data.manifest import SPLITS
from pipeline.data.scan import fingerprint, scan_classification, scan_labelled, scan_multilabel, scan_segmentation


def build_manifest(
    root: Path,
    *,
    task: str,
    root_as_written: str,
    num_classes: int | None,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    seed: int,
    fractions: dict[str, float],
    stratify: bool,
    labels_csv: Path | None = None,
    group_by: str | None = None,
    folds: int | None = None,
    fold: int = 0,
    duplicates: str = "warn",
) -> dict[str, Any]:
    """The manifest (as a JSON-ready dict) of the dataset at ``root``: the stage's pure core."""
    labels: list[Any]
    entries: list[dict[str, Any]]  # image, then label, labels or mask
    pixels: list[dict[int, int]] | None = None  # segmentation: per image, the pixels of each class
    if task == "multilabel":
        if labels_csv is None:
            raise PipelineError("data.labels: multilabel data needs a labels file (a CSV path,labels under data.root)")
        class_names, files, present = scan_multilabel(root, labels_csv, num_classes)
        entries = [{"image": f.rel, "labels": list(classes)} for f, classes in zip(files, present)]
        labels = list(present)
        images = files
        num_classes = len(class_names)
    elif task == "classification":
        if labels_csv is not None:
            class_names, files, labels = scan_labelled(root, labels_csv, num_classes)
        else:
            class_names, files, labels = scan_classification(root, num_classes)
        entries = [{"image": f.rel, "label": label} for f, label in zip(files, labels)]
        present = [(label,) for label in labels]
        images = files
        num_classes = len(class_names)
    else:
        pairs = scan_segmentation(root, images_dir, masks_dir, mask_suffix)
        try:
            num_classes = check_mask_classes([(m.rel, m.values) for _, m in pairs], num_classes)
        except PipelineError as exc:  # name the folder: the message may speak of all masks at once
            raise PipelineError(f"{root / masks_dir}: {exc}") from None
        class_names = segmentation_class_names(num_classes)
        entries = [{"image": i.rel, "mask": m.rel} for i, m in pairs]
        present = [tuple(1 if v and num_classes == 2 else v for v in m.values) for _, m in pairs]
        pixels = []
        for (_, mask), classes in zip(pairs, present):
            per_class: dict[int, int] = {}
            for c, n in zip(classes, mask.pixels):
                per_class[c] = per_class.get(c, 0) + n
            pixels.append(per_class)
        images = [i for i, _ in pairs]
        files = [f for pair in pairs for f in pair]
        labels = [0] * len(entries)
    stratified = stratify and task != "segmentation"
    problem = fraction_problem(fractions)
    if problem:
        raise PipelineError(f"split.fractions: {problem}")
    groups = group_keys([e["image"] for e in entries], group_by) if group_by else None
    if folds:
        where = assign_folds(
            groups or [e["image"] for e in entries],
            labels,
            test_fraction=fractions["test"],
            folds=folds,
            fold=fold,
            seed=seed,
            stratify=stratified,
            unit="groups" if groups else "files",
        )
    elif groups is not None:
        where = assign_groups(groups, labels, [float(fractions[s]) for s in SPLITS], seed, stratified)
    else:
        where = assign(labels, fractions, seed, stratified)
    copies = cross_split_duplicates(images, where)
    if copies and duplicates == "error":
        raise PipelineError(
            f"{len(copies)} image(s) in one split are byte-identical to one in another (a leak "
            f"into evaluation; split.duplicates: error): {several(pair_names(copies, images, where))}"
        )
    dropped = {copy for _, copy in copies} if duplicates == "drop" else set()
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    counts = {s: dict.fromkeys(class_names, 0) for s in SPLITS}
    pixel_counts = {s: dict.fromkeys(class_names, 0) for s in SPLITS}
    for index, (entry, split_index, classes) in enumerate(zip(entries, where, present)):
        if index in dropped:
            continue
        splits[SPLITS[split_index]].append({**entry, "group": groups[index]} if groups else entry)
        for c in set(classes):
            counts[SPLITS[split_index]][class_names[c]] += 1
        for c, n in (pixels[index] if pixels is not None else {}).items():
            pixel_counts[SPLITS[split_index]][class_names[c]] += n
    kept = [s for i, s in enumerate(where) if i not in dropped]
    summary = {
        "fractions": {s: round(kept.count(i) / max(len(kept), 1), 4) for i, s in enumerate(SPLITS)},
        "duplicates": {
            "across_splits": len(copies),
            "dropped": len(dropped),
            "pairs": pair_names(copies, images, where)[:100],
        },
    }
    if pixels is not None:
        summary["pixels"] = pixel_counts  # per class (segmentation): the imbalance and auto loss weights
    summary["imbalance"] = imbalance(pixel_counts["train"] if pixels is not None else counts["train"])
    if groups:
        summary["groups"] = {
            s: len({groups[j] for j, w in enumerate(where) if w == i and j not in dropped})
            for i, s in enumerate(SPLITS)
        }
    if folds:
        summary["fold"] = {"folds": folds, "fold": fold}
    return {
        "task": task,
        "root": root_as_written,
        "num_classes": num_classes,
        "class_names": class_names,
        "splits": splits,
        "counts": counts,
        "fingerprint": fingerprint(files),
        "summary": summary,
    }


def imbalance(counts: dict[str, int]) -> dict[str, Any]:
    """How uneven the training split's classes are: the largest class's count over the smallest's
    (images for classification, pixels for segmentation); ``ratio`` null when a class is absent."""
    largest, smallest = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    ratio = round(counts[largest] / counts[smallest], 2) if counts[smallest] else None
    return {"ratio": ratio, "largest": largest, "smallest": smallest}


def describe(manifest: dict[str, Any]) -> str:
    """One line for the log: the task, the data, the classes, each split's size and achieved fraction
    (and groups), and the cross-split duplicates."""
    summary = manifest.get("summary", {})
    achieved, groups = summary.get("fractions", {}), summary.get("groups")
    sizes = ", ".join(
        f"{s} {len(manifest['splits'][s])}"
        + (f" ({achieved[s]:.1%}" + (f", {groups[s]} groups" if groups else "") + ")" if s in achieved else "")
        for s in SPLITS
    )
    fold = summary.get("fold")
    line = f"{manifest['task']} data {manifest['root']}, {manifest['num_classes']} classes: {sizes}"
    if fold:
        line += f"; fold {fold['fold']} of {fold['folds']}"
    balance = summary.get("imbalance")
    if balance:
        unit = "pixels" if "pixels" in summary else "images"
        line += (
            f"; imbalance {balance['ratio']:.1f} (largest/smallest class in train"
            + (", by pixels)" if unit == "pixels" else ")")
            if balance["ratio"] is not None
            else f"; class {balance['smallest']!r} has no training {unit}"
        )
    copies = summary.get("duplicates", {})
    if copies.get("across_splits"):
        line += f"; {copies['across_splits']} image(s) identical to one in another split" + (
            f" ({copies['dropped']} dropped)" if copies.get("dropped") else ""
        )
    return line


def check_split(params: Params) -> list[Problem]:
    """Fractions sum to 1; group_by is 'folder' or a pattern with one capture group that cannot
    backtrack catastrophically (the split stage's own check, :func:`group_by_problem`); fold fits folds."""
    cfg, problems = params.get("split"), []
    problem = fraction_problem(cfg["fractions"])
    if problem:
        problems.append(Problem("split.fractions", problem))
    problem = group_by_problem(cfg["group_by"]) if cfg["group_by"] is not None else None
    if problem:
        problems.append(Problem("split.group_by", problem))
    if cfg["folds"] is None and cfg["fold"] != 0:
        problems.append(Problem("split.fold", f"fold {cfg['fold']} needs split.folds (the number of folds)"))
    elif cfg["folds"] is not None and cfg["fold"] >= cfg["folds"]:
        problems.append(
            Problem(
                "split.fold", f"fold {cfg['fold']} of {cfg['folds']} folds: folds are numbered 0 to {cfg['folds'] - 1}"
            )
        )
    return problems
