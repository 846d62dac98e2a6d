"""Building declared components so that ``validate`` and the stages share one code path.

A builder (``build_loss``, ``build_optimizer``, ...) raises :class:`ComponentError` with each problem
at its dotted key. ``validate`` calls the same builders on tiny stand-ins (a one-parameter optimizer,
a two-sample batch) and reports those problems, so a file that validates builds in its stage too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.config.errors import ComponentError, PipelineError, Problem
from pipeline.config.registry import Registry, signature_problems


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (libraries' messages may span lines or be empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < limit else text[: limit - 3] + "..."


def located(exc: PipelineError, default_key: str) -> Problem:
    """A builder's error as a problem at its key: a message that starts ``"model.freeze: ..."``
    belongs to ``model.freeze``; anything else to ``default_key``."""
    key, sep, rest = str(exc).partition(": ")
    if sep and key.startswith(default_key) and " " not in key:
        return Problem(key, rest)
    return Problem(default_key, str(exc))


def resolve(registry: Registry, name: str, key: str) -> Any:
    """The implementation registered as ``name`` (or user code ``module:attr``); an unknown name, or
    user code that fails to import in any way, is a :class:`ComponentError` at ``key``."""
    if name not in registry:
        raise ComponentError.at(key, registry.unknown_message(name))
    try:
        return registry.get(name)
    except PipelineError as exc:
        raise ComponentError.at(key, str(exc)) from None
    except Exception as exc:  # user code may fail to import in any way; report it, no traceback
        raise ComponentError.at(key, f"importing {name!r} failed: {type(exc).__name__}: {one_line(exc)}") from None


def check_binding(
    fn: Callable[..., Any], kwargs: dict[str, Any], *, key: str, skip: int = 0, provided: Iterable[str] = ()
) -> None:
    """:class:`ComponentError` listing why ``fn(**kwargs)`` would not bind (unknown or missing
    arguments), each at ``key.<argument>`` (or ``key``)."""
    problems = [
        Problem(f"{key}.{arg}" if arg else key, message)
        for arg, message in signature_problems(fn, kwargs, skip=skip, provided=provided)
    ]
    if problems:
        raise ComponentError(problems)


def required_arguments(fn: Callable[..., Any]) -> set[str]:
    """Names of ``fn``'s keyword-capable parameters without a default."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _succeeds(attempt: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any]) -> bool:
    try:
        attempt(kwargs)
    except Exception:
        return False
    return True


def blamed_attempt(
    attempt: Callable[[dict[str, Any]], Any],
    kwargs: dict[str, Any],
    *,
    key: str,
    what: str,
    required: Iterable[str] = (),
) -> Any:
    """``attempt(kwargs)`` (build and exercise a component from its keyword arguments). If it fails,
    blame the arguments whose value alone makes it fail (tried with the ``required`` ones only, or, if
    those alone fail, the arguments whose removal makes it succeed), and raise :class:`ComponentError` at ``key.<argument>``, or at ``key`` when no single one is to blame.
    A :class:`PipelineError` from the attempt is already located and passes through unchanged."""
    try:
        return attempt(kwargs)
    except PipelineError:
        raise
    except Exception as exc:  # libraries validate with TypeError, ValueError, AssertionError, ...
        message = f"{what}: {one_line(exc)}"
    base = {k: v for k, v in kwargs.items() if k in set(required)}
    if _succeeds(attempt, base):  # each optional argument alone on top of the required ones
        blamed = [arg for arg in kwargs if arg not in base and not _succeeds(attempt, {**base, arg: kwargs[arg]})]
    else:  # each argument left out in turn
        blamed = [arg for arg in kwargs if _succeeds(attempt, {k: v for k, v in kwargs.items() if k != arg})]
    raise ComponentError([Problem(f"{key}.{arg}", message) for arg in blamed] or [Problem(key, message)])
