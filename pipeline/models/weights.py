"""Starting weights: local state-dict files, and the libraries' own weights without ever hanging.

A local ``.pt``/``.pth``/``.bin``/``.safetensors`` file is read with ``weights_only=True`` (no
arbitrary pickles), unwrapped from the usual containers, and copied into a freshly built model by
:func:`apply_state_dict`, which drops a head whose shape differs (fine-tuning to another number of
classes), adapts the input convolution to another channel count, and reports all of it.

``pretrained: true`` resolves the library's weight file first (a warm cache needs no network) and
only then downloads, with short timeouts; offline it fails in seconds with :func:`no_weights_error`,
which says how to supply a local file instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline import torchfile
from pipeline.config.building import one_line
from pipeline.config.errors import PipelineError
from pipeline.models.finetune import in_prefixes

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass
class LoadReport:
    """What happened to each tensor of a weight file (recorded in the model stage's summary)."""

    source: str  # "file", "torchvision" or "timm"
    path: str | None = None
    sha256: str | None = None
    loaded: int = 0  # tensors copied as they are
    dropped: list[str] = field(default_factory=list)  # head tensors whose shape did not fit
    adapted: list[str] = field(default_factory=list)  # input convolutions adapted to in_chans
    missing: list[str] = field(default_factory=list)  # model tensors the file lacks (random init)
    unexpected: list[str] = field(default_factory=list)  # file tensors the model has no place for

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, unwrapped (``{"state_dict": ...}``, ``{"model": ...}``) and with
    ``module.``/``_orig_mod.`` prefixes removed. Pickles load with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"model.pretrained: weight file {str(path)!r} does not exist")
    if path.suffix not in SUFFIXES:
        raise PipelineError(
            f"model.pretrained: {str(path)!r} has an unsupported extension; expected one of {', '.join(SUFFIXES)}"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torchfile.load(path)
    except PipelineError as exc:  # a pickle holding more than tensors, or a corrupt file
        raise PipelineError(f"model.pretrained: {exc}") from None
    except Exception as exc:  # safetensors' own errors on a corrupt file
        raise PipelineError(f"model.pretrained: {path}: not a readable safetensors file ({one_line(exc)})") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise PipelineError(
            f"model.pretrained: {str(path)!r} holds no state dict (a mapping of parameter names to tensors)"
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. an epoch counter stored next to the weights
        for prefix in STRIPPED_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    if not state:
        raise PipelineError(f"model.pretrained: {str(path)!r} holds no tensors")
    return state


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A conv kernel ``[out, c, kh, kw]`` for ``in_chans`` inputs: summed over ``c`` for one channel,
    else tiled and rescaled by ``c / in_chans`` so the response to a grey image stays the same
    (timm's ``adapt_input_conv`` rule)."""
    source_chans = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // source_chans)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (source_chans / in_chans)


def _encoder_only(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Weights of a bare backbone loaded into a U-Net: prefix them with ``encoder.``."""
    if not any(k in model_keys for k in state) and any(f"encoder.{k}" in model_keys for k in state):
        return {f"encoder.{k}": v for k, v in state.items()}
    return state


def apply_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], *, head_prefixes: Sequence[str], report: LoadReport
) -> LoadReport:
    """Copy ``state`` into ``model``: drop head tensors of another shape, adapt the first conv to the
    model's input channels, and refuse any other shape clash (the file is for another architecture)."""
    target = model.state_dict()
    state = _encoder_only(state, set(target))
    first_conv = next((n for n, p in model.named_parameters() if p.ndim == 4), None)
    usable: dict[str, torch.Tensor] = {}
    clashes = []
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            usable[key] = value
        elif in_prefixes(key, head_prefixes):
            report.dropped.append(f"{key}: {list(value.shape)} in the file, {list(target[key].shape)} in the model")
        elif (
            key == first_conv
            and value.ndim == 4
            and value.shape[0] == target[key].shape[0]
            and value.shape[2:] == target[key].shape[2:]
        ):
            usable[key] = adapt_input_conv(value, target[key].shape[1])
            report.adapted.append(f"{key}: {value.shape[1]} -> {target[key].shape[1]} input channels")
        else:
            clashes.append(f"{key} {list(value.shape)} (model: {list(target[key].shape)})")
    where = report.path or report.source
    if clashes:
        raise PipelineError(
            f"model.pretrained: {where} does not fit this model; shapes differ for "
            f"{len(clashes)} tensor(s) outside the head, e.g. {'; '.join(clashes[:3])}. Were the "
            f"weights made for another architecture (model.name, model.unet)?"
        )
    if not usable:
        raise PipelineError(
            f"model.pretrained: no tensor of {where} matches the model's names "
            f"(file: {', '.join(list(state)[:3])}...; model: {', '.join(list(target)[:3])}...)"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable) - len(report.adapted)
    report.missing = [k for k in target if k not in usable]
    return report


# --- the libraries' own weights, offline-safe ------------------------------------------------------

OFFLINE_VARS = "HF_HUB_OFFLINE=1"


def offline() -> bool:
    """True when the environment forbids downloads (``HF_HUB_OFFLINE=1``, as Hugging Face tools use)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def short_timeouts(seconds: float = DOWNLOAD_TIMEOUT_S) -> Iterator[None]:
    """Bound every socket operation so an unreachable host fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def reachable(url: str, timeout: float = 5.0) -> str | None:
    """``None`` when ``url``'s host accepts a TCP connection within ``timeout`` seconds, else why not.

    Checked before any download because download clients retry with back-off (huggingface_hub
    spends ~25 s per file offline) and DNS lookups ignore socket timeouts; the probe runs in a
    daemon thread so even a stuck resolver cannot hold the stage."""
    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot reach {host}:{port} ({exc})")

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return outcome[0] if outcome else f"cannot reach {host}:{port} (no answer within {timeout:.0f} s)"


def no_weights_error(library: str, name: str, url: str, cache: str, reason: object) -> PipelineError:
    """The offline failure: what is missing, why, and how to supply a local file instead."""
    suffix = Path(urlparse(url).path).suffix or ".pth"
    return PipelineError(
        f"model.pretrained: true needs {library}'s weights for {name!r}, which are not in the cache "
        f"({cache}) and cannot be downloaded now: {reason}. Without a network, supply them as a local file: "
        f"download {url} on a machine that has internet, copy it into this project (e.g. weights/) and set "
        f"`model.pretrained: weights/{name}{suffix}`; or copy it into the cache above"
    )


def _download(library: str, name: str, url: str, cached: Path) -> Path:
    """``url`` into ``cached`` (torch.hub's cache layout), failing fast when offline."""
    if cached.is_file():
        return cached
    reason: object = f"offline mode is set ({OFFLINE_VARS})" if offline() else reachable(url)
    if reason is None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with short_timeouts():
                torch.hub.download_url_to_file(url, str(cached), progress=False)
            return cached
        except Exception as exc:  # URLError, socket.timeout, HTTP errors: all mean "no weights"
            reason = exc
    raise no_weights_error(library, name, url, str(cached.parent), reason)


def torchvision_weights_file(name: str) -> Path:
    """The file of torchvision's default weights for ``name``: from the torch hub cache, or
    downloaded there (only when the host answers)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        raise PipelineError(
            f"model.pretrained: torchvision has no pretrained weights for {name!r}; "
            f"use pretrained: false or a local file"
        ) from None
    return _download(
        "torchvision", name, weights.url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    )


def timm_weights_file(name: str) -> Path:
    """The file of timm's default pretrained weights for ``name`` (Hugging Face hub, else its URL):
    from the cache when present; downloaded only when not offline and the host answers."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    cfg: dict[str, Any] = pretrained.to_dict() if pretrained is not None else {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if not hub_id:
        if not url:
            raise PipelineError(
                f"model.pretrained: timm has no pretrained weights for {name!r}; use pretrained: false or a local file"
            )
        return _download("timm", name, url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url))
    from huggingface_hub import constants, hf_hub_download

    repo, _, revision = hub_id.partition("@")
    filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:  # the cache first: a warm cache needs no network at all
        try:
            return Path(hf_hub_download(repo, filename, revision=revision or None, local_files_only=True))
        except Exception:
            continue
    file_url = f"{constants.ENDPOINT}/{repo}/resolve/{revision or 'main'}/{filenames[0]}"
    reason: object = f"offline mode is set ({OFFLINE_VARS})" if offline() else reachable(file_url)
    if reason is None:
        for filename in filenames:
            try:
                return Path(hf_hub_download(repo, filename, revision=revision or None, etag_timeout=DOWNLOAD_TIMEOUT_S))
            except Exception as exc:  # EntryNotFound: try the next name; anything else: report it
                reason = exc
    raise no_weights_error("timm", name, file_url, str(constants.HF_HUB_CACHE), reason)
