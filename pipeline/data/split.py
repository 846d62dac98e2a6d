"""Splitting a dataset: scan the files once, assign each to train/val/test, and describe the result
as a manifest (see :class:`pipeline.data.manifest.Manifest`).

The same seed and the same files give a byte-identical manifest. Classification is stratified (each
class dealt into the splits in proportion); every file lands in exactly one split.

Scale: one read per file, in worker processes for large datasets. That read gives the
content hash (the fingerprint), the image size from the PNG header or PIL's lazy open (masks must
match their image) and, for masks only, the decoded values (to check or infer
``data.num_classes``). Images are never decoded here.
"""
from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config.checks import semantic_check
from pipeline.config.errors import PipelineError, Problem
from pipeline.data.files import (DECODE_ERRORS, IMAGE_EXTENSIONS, MASK_EXTENSIONS, check_mask_classes,
                                 decode_error_reason, folder_problems, inside, mask_values, segmentation_class_names, several)
from pipeline.data.manifest import SPLITS




CHUNK = 256  # files per pool task at least: per-file futures would cost more than tiny reads


PROCESS_THRESHOLD = 2000  # files from which forking workers pays (measured on 2 cores: break-even)


@dataclass(frozen=True)
class ScannedFile:
    """What one read of a file tells: its content hash, its (width, height), and mask values."""

    rel: str
    digest: str
    size: tuple[int, int]
    values: tuple[int, ...] = ()


def _scan_file(root: str, rel: str, is_mask: bool) -> ScannedFile:
    """Read one file once: hash it and decode it fully, so a truncated or corrupt file is reported
    here with its path rather than by a DataLoader worker mid-training; masks also give their values.
    (Plain strings, not pathlib, on this path: it runs once per file.)"""
    path = os.path.join(root, rel)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            values = mask_values(image, path) if is_mask else ()
            return ScannedFile(rel, digest, image.size, values)
    except DECODE_ERRORS as exc:
        raise PipelineError(f"{path}: not a readable {'mask' if is_mask else 'image'} "
                            f"({decode_error_reason(exc, len(data))})") from None


def _scan_chunk(root: str, jobs: Sequence[tuple[str, bool]]) -> list[ScannedFile]:
    return [_scan_file(root, rel, is_mask) for rel, is_mask in jobs]


def scan_files(root: Path, jobs: Sequence[tuple[str, bool]]) -> list[ScannedFile]:
    """:func:`_scan_file` for every ``(relative path, is_mask)``, in order; the first failure in
    order raises. Per-file work on small files is mostly Python, so threads only fight over the GIL
    (2.4x slower than one thread on 40k tiny files): large datasets go to forked worker processes,
    one per CPU (1.45x faster on 2 cores); small ones, and platforms without fork, run inline."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if len(jobs) < PROCESS_THRESHOLD or cpus == 1 or "fork" not in mp.get_all_start_methods():
        return _scan_chunk(str(root), jobs)
    size = max(CHUNK, len(jobs) // (cpus * 8))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    with ProcessPoolExecutor(cpus, mp_context=mp.get_context("fork")) as pool:
        return [scanned for part in pool.map(functools.partial(_scan_chunk, str(root)), chunks) for scanned in part]


def _listing(folder: Path, real_root: Path, what: str) -> list[os.DirEntry[str]]:
    """The visible entries of ``folder`` sorted by name; symlinks leading outside the root refused."""
    try:
        entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise PipelineError(f"{folder}: cannot list {what} ({exc.strerror or exc})") from None
    for entry in entries:
        if entry.is_symlink() and not inside(Path(entry.path), real_root):
            raise PipelineError(f"{entry.path} is a link to {os.path.realpath(entry.path)}, outside the data "
                                f"root {real_root}; nothing is read from outside the data root")
    return entries


def _files(folder: Path, real_root: Path, extensions: Iterable[str], what: str) -> list[str]:
    """File names in ``folder``: sub-folders and unsupported extensions are errors."""
    names = []
    for entry in _listing(folder, real_root, what):
        if entry.is_dir():
            raise PipelineError(f"{entry.path}: unexpected folder among {what}")
        suffix = os.path.splitext(entry.name)[1]
        if suffix.lower() not in extensions:
            raise PipelineError(f"{entry.path}: unsupported file type {suffix or '(none)'!r}"
                                f" among {what} (supported: {', '.join(sorted(extensions))})")
        names.append(entry.name)
    return names


def _real_root(root: Path, task: str, images_dir: str = "", masks_dir: str = "") -> Path:
    problems = folder_problems(root, task, images_dir, masks_dir)
    if problems:
        raise PipelineError("; ".join(f"{p.key}: {p.message}" for p in problems))
    return root.resolve()


def scan_classification(root: Path, num_classes: int | None) -> tuple[list[str], list[ScannedFile], list[int]]:
    """``root/<class>/<image>`` -> (sorted class names, files, label per file)."""
    real_root = _real_root(root, "classification")
    entries = _listing(root, real_root, "class folders")
    classes = [e.name for e in entries if e.is_dir()]
    if not classes:
        loose = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise PipelineError(f"data.root: {root} has no class folders{hint}; classification expects "
                            f"root/<class>/<image>")
    if num_classes is not None and num_classes != len(classes):
        raise PipelineError(f"data.num_classes is {num_classes} but {root} has {len(classes)} class folders "
                            f"({several(classes, 10)})")
    rels, labels = [], []
    for label, name in enumerate(classes):
        files = _files(root / name, real_root, IMAGE_EXTENSIONS, f"the images of class {name!r}")
        if not files:
            raise PipelineError(f"{root / name}: empty class folder (no images of class {name!r})")
        rels += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    return classes, scan_files(root, [(rel, False) for rel in rels]), labels


def _by_stem(names: list[str], folder: str) -> dict[str, str]:
    stems: dict[str, str] = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise PipelineError(f"{folder}/{stems[stem]} and {folder}/{name} share the stem {stem!r}; "
                                f"images and masks are matched by stem")
        stems[stem] = name
    return stems


def scan_segmentation(root: Path, images_dir: str, masks_dir: str,
                      mask_suffix: str) -> list[tuple[ScannedFile, ScannedFile]]:
    """``root/images_dir/<stem>.*`` paired with ``root/masks_dir/<stem><mask_suffix>.*``."""
    real_root = _real_root(root, "segmentation", images_dir, masks_dir)
    image_folder, mask_folder = root / images_dir, root / masks_dir
    images = _by_stem(_files(image_folder, real_root, IMAGE_EXTENSIONS, "images"), images_dir)
    masks = _by_stem(_files(mask_folder, real_root, MASK_EXTENSIONS, "masks"), masks_dir)
    if not images:
        raise PipelineError(f"{image_folder}: no images")
    lonely = [str(image_folder / n) for s, n in images.items() if s + mask_suffix not in masks]
    if lonely:
        raise PipelineError(f"{len(lonely)} image(s) without a mask (looked for {masks_dir}/<stem>{mask_suffix}"
                            f".<ext>, data.mask_suffix = {mask_suffix!r}): {several(lonely)}")
    paired = {s + mask_suffix for s in images}
    orphans = [str(mask_folder / n) for s, n in masks.items() if s not in paired]
    if orphans:
        raise PipelineError(f"{len(orphans)} mask(s) without an image in {images_dir}/ (data.mask_suffix = "
                            f"{mask_suffix!r}): {several(orphans)}")
    stems = sorted(images)
    scanned = scan_files(root, [job for s in stems for job in (
        (f"{images_dir}/{images[s]}", False), (f"{masks_dir}/{masks[s + mask_suffix]}", True))])
    pairs = list(zip(scanned[0::2], scanned[1::2]))
    for image, mask in pairs:
        if image.size != mask.size:
            raise PipelineError(f"{root / mask.rel}: mask is {mask.size[0]}x{mask.size[1]} but its image "
                                f"{image.rel} is {image.size[0]}x{image.size[1]}; a mask must have its image's size")
    return pairs


def fraction_problem(fractions: dict[str, float]) -> str | None:
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        terms = " + ".join(f"{s} {fractions[s]:g}" for s in SPLITS)
        return f"fractions must sum to 1, but {terms} = {total:.6g}"
    return None


def deal(n: int, fractions: Sequence[float]) -> list[int]:
    """The split index of each of ``n`` positions, dealt so that after every position each split's
    count is within one of its share (stratification comes from dealing a class-ordered sequence)."""
    counts = [0] * len(fractions)
    out = []
    for i in range(1, n + 1):
        best = max(range(len(fractions)), key=lambda s: (fractions[s] * i - counts[s], -s))
        counts[best] += 1
        out.append(best)
    return out


def assign(labels: Sequence[int], fractions: dict[str, float], seed: int, stratify: bool) -> list[int]:
    """Split index (into :data:`SPLITS`) of each item, deterministic given ``seed``; refuses
    fractions that leave a split empty (training needs val, evaluation needs test)."""
    problem = fraction_problem(fractions)
    if problem:
        raise PipelineError(f"split.fractions: {problem}")
    rng = np.random.default_rng(seed)
    if stratify:
        by_label = np.argsort(np.asarray(labels), kind="stable")
        groups = np.split(by_label, np.flatnonzero(np.diff(np.asarray(labels)[by_label])) + 1)
        order = np.concatenate([g[rng.permutation(len(g))] for g in groups])
    else:
        order = rng.permutation(len(labels))
    shares = [float(fractions[s]) for s in SPLITS]
    result = [0] * len(labels)
    for position, split_index in zip(order, deal(len(labels), shares)):
        result[int(position)] = split_index
    for index, name in enumerate(SPLITS):
        if index not in result:
            raise PipelineError(f"split.fractions.{name} = {shares[index]:g} leaves the {name} split empty: "
                                f"{len(labels)} files x {shares[index]:g} = {len(labels) * shares[index]:.2f}; "
                                f"raise the fraction or add data")
    return result


def fingerprint(files: Iterable[ScannedFile]) -> str:
    """sha256 over every file's relative path and content hash (sorted): changes iff the data does."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.rel):
        digest.update(f"{f.rel}\t{f.digest}\n".encode())
    return digest.hexdigest()


def build_manifest(root: Path, *, task: str, root_as_written: str, num_classes: int | None,
                   images_dir: str = "images", masks_dir: str = "masks", mask_suffix: str = "",
                   seed: int, fractions: dict[str, float], stratify: bool) -> dict[str, Any]:
    """The manifest (as a JSON-ready dict) of the dataset at ``root``: the stage's pure core."""
    if task == "classification":
        class_names, files, labels = scan_classification(root, num_classes)
        entries = [{"image": f.rel, "label": label} for f, label in zip(files, labels)]
        present = [(label,) for label in labels]
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
        files = [f for pair in pairs for f in pair]
        labels = [0] * len(entries)
    where = assign(labels, fractions, seed, stratify and task == "classification")
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    counts = {s: dict.fromkeys(class_names, 0) for s in SPLITS}
    for entry, split_index, classes in zip(entries, where, present):
        splits[SPLITS[split_index]].append(entry)
        for c in set(classes):
            counts[SPLITS[split_index]][class_names[c]] += 1
    return {"task": task, "root": root_as_written, "num_classes": num_classes, "class_names": class_names,
            "splits": splits, "counts": counts, "fingerprint": fingerprint(files)}


@semantic_check("split")
def _check_fractions(params: Any) -> list[Problem]:
    problem = fraction_problem(params.get("split.fractions"))
    return [Problem("split.fractions", problem)] if problem else []


def describe(manifest: dict[str, Any]) -> str:
    """One line for the log: the task, the data, the classes and the size of each split."""
    sizes = ", ".join(f"{s} {len(manifest['splits'][s])}" for s in SPLITS)
    return f"{manifest['task']} data {manifest['root']}, {manifest['num_classes']} classes: {sizes}"
