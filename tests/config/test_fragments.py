"""The completion fragments (schemas/sections/generated/): in step with the registries, complete for
editors, and without any say in what validates."""

from __future__ import annotations

import copy
import inspect
import json
from typing import Literal, Optional

import jsonschema
import pytest
import referencing
from referencing.jsonschema import DRAFT202012

from pipeline.config import fragments
from pipeline.config.arguments import argument_docs, has_json_form, json_value, keyword_arguments, type_text
from pipeline.config.registry import REGISTRIES
from pipeline.config.schema import ROOT_SCHEMA, SCHEMA_DIR
from tests.conftest import problems_by_key, write_params

KINDS = sorted(fragments.SECTIONS)


def _committed(kind: str) -> dict:
    return json.loads(fragments.fragment_path(kind).read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", KINDS)
def test_committed_fragments_are_what_the_registries_generate(kind):
    generated = fragments.fragment(kind)
    made_from = _committed(kind).get("x-generated-from", {}).get("packages")
    installed = generated["x-generated-from"]["packages"]
    if made_from != installed:  # torch's classes and docstrings change between releases
        pytest.skip(
            f"{fragments.fragment_path(kind).name} was made from {made_from}, this is {installed}: "
            f"run `{fragments.COMMAND}` to compare (and commit what it writes)"
        )
    assert fragments.fragment_path(kind).read_text(encoding="utf-8") == fragments.render(kind), (
        f"{fragments.fragment_path(kind)} is out of date with the {kind} registry: run `{fragments.COMMAND}`"
    )


def test_generation_is_deterministic():
    for kind in KINDS:
        text = fragments.render(kind)
        assert text == fragments.render(kind)
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _branches(kind: str) -> dict[str, dict]:
    """{name: {"required": bool, "params": {argument: schema}}} from a fragment."""
    out = {}
    for branch in fragments.fragment(kind)["$defs"]["arguments"]["allOf"]:
        name = branch["if"]["properties"]["name"]["const"]
        out[name] = {
            "required": branch["if"].get("required") == ["name"],
            "params": branch["then"]["properties"]["params"]["properties"],
        }
    return out


def test_every_registry_name_is_offered_and_any_other_string_still_passes():
    for kind in KINDS:
        names = fragments.fragment(kind)["$defs"]["name"]["anyOf"]
        enum = names[0]
        assert enum["enum"] == REGISTRIES[kind].names()
        assert len(enum["enumDescriptions"]) == len(enum["enum"]) and all(enum["enumDescriptions"])
        assert jsonschema.Draft202012Validator(fragments.fragment(kind)["$defs"]["name"]).is_valid("my.module:Thing")


def test_arguments_come_with_descriptions_and_defaults():
    losses, optimizers, schedulers = _branches("losses"), _branches("optimizers"), _branches("schedulers")
    assert set(losses["focal"]["params"]) == {"gamma", "alpha"}
    assert losses["focal"]["params"]["gamma"]["default"] == 2.0
    assert "Focal loss" in losses["focal"]["params"]["gamma"]["description"]  # the loss's own summary, and its type
    assert "(float)" in losses["focal"]["params"]["gamma"]["description"]
    assert "sum" not in losses  # sum takes terms, not params
    adamw = optimizers["AdamW"]["params"]
    assert "params" not in adamw and "lr" not in adamw  # the pipeline passes them
    assert adamw["betas"]["default"] == [0.9, 0.999] and adamw["weight_decay"]["default"] == 0.01
    assert adamw["weight_decay"]["description"].startswith("weight decay coefficient")  # torch's Args: entry
    assert "default:" not in adamw["weight_decay"]["description"]  # the default comes from the signature
    step = schedulers["StepLR"]["params"]
    assert (
        "optimizer" not in step
        and "required" in step["step_size"]["description"]
        and "default" not in step["step_size"]
    )
    assert schedulers["step_decay"]["params"]["every"]["default"] == 10
    # the section's default name applies when name is left out; any other needs it written
    assert not losses["dice_bce"]["required"] and losses["focal"]["required"]
    assert not optimizers["AdamW"]["required"] and optimizers["SGD"]["required"]


def test_cli_defaults_and_fragments_read_arguments_the_same_way(capsys):
    """`show` lists the defaults it does not see set; the fragment offers the same arguments."""
    from pipeline.cli import _default_arguments

    shown = _default_arguments("losses", "tversky", {"alpha": 0.5})
    offered = _branches("losses")["tversky"]["params"]
    assert set(shown) == set(offered) - {"alpha"}
    assert all(offered[k]["default"] == v for k, v in shown.items())


def _validator(with_fragments: bool) -> jsonschema.Draft202012Validator:
    """params.yaml's schema as the project loads it, or with every fragment emptied."""
    resources, root = [], None
    for file in sorted(SCHEMA_DIR.rglob("*.json")):
        contents = json.loads(file.read_text(encoding="utf-8"))
        uri = file.relative_to(SCHEMA_DIR).as_posix()
        if not with_fragments and file.parent == fragments.GENERATED_DIR:
            contents = {"$schema": contents["$schema"], "$defs": {"name": {}, "arguments": {}}}
        resources.append((uri, DRAFT202012.create_resource(contents)))
        root = contents if uri == ROOT_SCHEMA else root
    return jsonschema.Draft202012Validator(root, registry=referencing.Registry().with_resources(resources))


def _documents() -> list[dict]:
    """Every registry entry with each argument at its default, at a wrong type, and beside an unknown
    one; names that are not strings, empty, unknown or user code; terms."""
    import yaml

    base = yaml.safe_load((SCHEMA_DIR.parent / "params.yaml").read_text())
    docs = []
    for kind, section in fragments.SECTIONS.items():
        for name, branch in _branches(kind).items():
            defaults = {k: v.get("default") for k, v in branch["params"].items()}
            for params in (defaults, {k: "abc" for k in defaults}, {k: [1, {}] for k in defaults}, {"nope": 1}):
                docs.append({**copy.deepcopy(base), section: {**base[section], "name": name, "params": params}})
        for name in (5, "", "no_such_thing", "tests.user_losses:ScaledL1", None):
            docs.append({**copy.deepcopy(base), section: {**base[section], "name": name}})
        docs.append({**copy.deepcopy(base), section: {k: v for k, v in base[section].items() if k != "name"}})
    docs.append(
        {
            **copy.deepcopy(base),
            "loss": {"name": "sum", "terms": [{"name": "focal", "params": {"gamma": "x"}}, {"name": 3}, {"weight": 1}]},
        }
    )
    return docs


def test_fragments_constrain_nothing():
    with_fragments, without = _validator(True), _validator(False)
    for doc in _documents():
        got = sorted((e.json_path, e.message) for e in with_fragments.iter_errors(doc))
        assert got == sorted((e.json_path, e.message) for e in without.iter_errors(doc)), (
            doc["loss"],
            doc["optimizer"],
        )


@pytest.mark.parametrize(
    "section, params, key",
    [
        ("loss", {"name": "dice", "params": {"smoth": 1.0}}, "loss.params.smoth"),
        ("optimizer", {"name": "SGD", "lr": 0.1, "params": {"momentun": 0.9}}, "optimizer.params.momentun"),
        ("scheduler", {"name": "StepLR", "params": {"step_size": 2, "gama": 0.5}}, "scheduler.params.gama"),
    ],
)
def test_an_unknown_argument_is_still_one_located_problem(tmp_path, section, params, key):
    problems = problems_by_key(write_params(tmp_path / "params.yaml", link=True, **{section: params}))
    assert list(problems) == [key] and "unexpected argument" in problems[key], problems


class _Documented:
    """A class documented the way torch documents its optimizers.

    Args:
        rate (float, optional): how fast it goes. Longer explanation that is
            not part of the first sentence (default: 0.5)
        names (list of str): the names, see :class:`torch.nn.Module`
            and more. Default: ``[]``.
    """

    def __init__(self, rate: Optional[float] = 0.5, *, names: tuple[str, ...] = ("a",), fn=len, big=float("inf")):
        pass


def test_argument_reading():
    docs = argument_docs(_Documented)
    assert docs == {"rate": "how fast it goes.", "names": "the names, see torch.nn.Module and more."}
    args = {a.name: a for a in keyword_arguments(_Documented)}
    assert args["rate"].type_text == "Optional[float]"  # a string annotation (this module's) is kept as written
    assert type_text(Optional[float]) == "float | None" and type_text(tuple[str, ...]) == "tuple[str, ...]"
    assert type_text(Literal["cos", "linear"]) == "Literal['cos', 'linear']" and type_text(float) == "float"
    assert json_value(args["names"].default) == ["a"]
    assert not has_json_form(args["fn"].default) and not has_json_form(args["big"].default)
    assert type_text("torch.Tensor | None") == "Tensor | None" and type_text(inspect.Parameter.empty) == ""
    assert [a.name for a in keyword_arguments(REGISTRIES["optimizers"].find("SGD"), "optimizers")][:2] == [
        "momentum",
        "dampening",
    ]


def test_schema_command_writes_and_checks(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setattr(fragments, "GENERATED_DIR", tmp_path / "generated")
    assert main(["schema", "--check"]) == 1
    assert "run `python -m pipeline schema`" in capsys.readouterr().err
    assert main(["schema"]) == 0
    assert capsys.readouterr().out.count(": written") == len(KINDS)
    for kind in KINDS:
        assert (tmp_path / "generated" / f"{kind}.schema.json").read_text() == fragments.render(kind)
    assert main(["schema"]) == 0 and capsys.readouterr().out.count(": up to date") == len(KINDS)
    assert main(["schema", "--check"]) == 0
