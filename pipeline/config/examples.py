"""The example params files, ``configs/<name>.yaml``: params.yaml with a small overlay each.

A full copy of params.yaml drifts (a key added to params.yaml and not to the copy shows as a spurious
``-`` column in ``dvc exp show`` of a run made from it). So each example is generated: params.yaml,
comments and all (read by ruamel's round trip, since users read them), with the keys of
``configs/overlays/<name>.yaml`` set over it. The overlay's leading comment comes first (after the
schema line, rewritten to resolve from configs/), then params.yaml's, and a key's end-of-line comment in the
overlay replaces params.yaml's for that key. ``python -m pipeline configs`` writes them
(atomically), ``--check`` reports the stale ones; a test runs it. An overlay may only set keys params.yaml has, so
an example has exactly params.yaml's keys.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from pipeline.config.errors import PipelineError
from pipeline.config.modeline import MODELINE, reference_from
from pipeline.config.schema import ROOT_SCHEMA, SCHEMA_DIR

REPO = SCHEMA_DIR.parent
CONFIGS = REPO / "configs"
OVERLAYS = CONFIGS / "overlays"
COMMAND = "python -m pipeline configs"


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments, order, flow style and quoting survive
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's layout
    yaml.width = 4096
    yaml.preserve_quotes = True
    yaml.brace_single_entry_mapping_in_flow_sequence = True  # [{GaussianBlur: ...}] as written
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )  # null, as written, not an empty value
    return yaml


def overlays(folder: Path = OVERLAYS) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def _leading_comment(text: str) -> list[str]:
    """The comment lines that open ``text`` (up to the first key or blank line)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _set(base: Any, overlay: Any, where: str, source: Path) -> None:
    """Set every key of ``overlay`` in ``base`` (both round-trip mappings), with its comment if it has one."""
    for key, value in overlay.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise PipelineError(f"{source}: {dotted} is not in params.yaml; an overlay only sets keys it has")
        if hasattr(value, "items") and hasattr(base[key], "items"):
            _set(base[key], value, dotted, source)
            continue
        base[key] = value
        _take_comment(base, overlay, key)


def _eol(mapping: Any, key: Any) -> tuple[Any, str | None]:
    """The comment token after ``key``'s value, and its end-of-line comment (None if it has none: the
    token may hold only the blank lines that follow)."""
    entry = mapping.ca.items.get(key)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None or not token.value.lstrip(" ").startswith("#"):
        return token, None
    return token, token.value.split("\n", 1)[0].strip()


def _take_comment(base: Any, overlay: Any, key: Any) -> None:
    """``key``'s end-of-line comment from the overlay, if it has one (at the overlay's column), in place
    of params.yaml's, whose blank lines after it stay."""
    source, text = _eol(overlay, key)
    if text is None:
        return
    token, old = _eol(base, key)
    if token is None:
        base.yaml_add_eol_comment(text, key, column=32)
        return
    rest = token.value.split("\n", 1)[1] if old is not None else token.value.lstrip("\n")
    replacement = copy.copy(token)
    replacement.value = f"{text}\n{rest}"
    replacement.column = source.column  # where the overlay aligns it
    base.ca.items[key][2] = replacement


def render(overlay: Path, params: Path = REPO / "params.yaml", out: Path | None = None) -> str:
    """The example ``overlay`` makes: ``params`` with the overlay's keys and comments over it."""
    out = out or CONFIGS / overlay.name
    yaml = _yaml()
    base_text = params.read_text(encoding="utf-8")
    overlay_text = overlay.read_text(encoding="utf-8")
    base = yaml.load(base_text)
    changes = yaml.load(overlay_text)
    if changes is not None:
        _set(base, changes, "", overlay)
    buf = io.StringIO()
    yaml.dump(base, buf)
    body = buf.getvalue().splitlines()
    header = _leading_comment(base_text)
    body = body[len(header) :]
    modeline = f"# yaml-language-server: $schema={reference_from(out, SCHEMA_DIR / ROOT_SCHEMA)}"
    theirs = [line for line in header if not MODELINE.match(line)]
    mine = [line for line in _leading_comment(overlay_text) if not MODELINE.match(line)]
    return "\n".join([modeline, *mine, *theirs, *body]) + "\n"


def generated(params: Path = REPO / "params.yaml", configs: Path = CONFIGS) -> dict[Path, str]:
    """Each example file and the text its overlay makes."""
    out = {}
    for overlay in overlays(configs / "overlays"):
        out[configs / overlay.name] = render(overlay, params, configs / overlay.name)
    return out


def stale(params: Path = REPO / "params.yaml", configs: Path = CONFIGS) -> dict[Path, str]:
    """The examples that differ from what params.yaml and their overlay make (or are missing), with
    the text they should hold (``python -m pipeline configs`` writes it)."""
    return {
        path: text
        for path, text in generated(params, configs).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    }
