"""What a rank runs: a function with its arguments, or a cell's code in the notebook's globals.

A forked rank gets the task itself; a spawned rank gets it pickled with cloudpickle, and whatever cannot be pickled
is named before any process starts.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import cloudpickle

from wandbflow import scope
from wandbflow.errors import LaunchError


class Task(Protocol):
    """What every task does: run on a rank, and travel pickled to a spawned one."""

    def run(self, rank: int) -> Any:
        """Run on one rank (inside ``torch.distributed`` when initialized); return what goes back."""

    def shipped(self) -> bytes:
        """This task pickled for a spawned rank; :class:`LaunchError` names what cannot be pickled."""


@dataclass
class FunctionTask:
    """``fn(*args, **kwargs)`` on each rank, in a scope of its own when it is undecorated and ``scope_with`` is set."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    scope_with: dict[str, Any] | None  # settings to scope an undecorated function with; None: no scope of its own

    def run(self, rank: int) -> Any:
        """Call the function (``asyncio.run`` for a coroutine function); its value goes back."""
        if self.scope_with is None or hasattr(self.fn, "__wandbflow_settings__"):
            return _call(self.fn, self.args, self.kwargs)
        source = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', task_name(self.fn))}"
        with scope.Scope(task_name(self.fn), self.scope_with, source_kind="function", source=source):
            return _call(self.fn, self.args, self.kwargs)

    def shipped(self) -> bytes:
        """The task pickled; what cannot be pickled (the function, an argument) is named."""
        parts = {"the function": self.fn}
        parts.update({f"argument {i}": a for i, a in enumerate(self.args)})
        parts.update({f"keyword argument {k!r}": v for k, v in self.kwargs.items()})
        return _pickle_or_name(self, parts)


@dataclass
class CellTask:
    """A cell's code on each rank, in the cell's scope, seeing the notebook's globals ``namespace``."""

    source: str
    namespace: dict[str, Any]
    name: str
    settings: dict[str, Any]
    save_code: bool

    def run(self, rank: int) -> tuple[dict[str, bytes], bytes, list[str]] | None:
        """Run the code; rank 0 sends back its new or rebound variables and last value (pickled), and what stayed."""
        body, last = compile_cell(self.source, self.name)
        names = {**self.namespace, "__name__": "__main__", "__builtins__": builtins}
        before = dict(names)
        value = None
        cell = scope.Scope(self.name, self.settings, source_kind="cell", source=self.source, quiet=True)
        with cell:
            if self.save_code:
                cell.save_file(f"code/{self.name}.py", self.source)
            exec(body, names)
            if last is not None:
                value = eval(last, names)
        if rank != 0:
            return None
        changed = {k: v for k, v in names.items() if not k.startswith("__") and before.get(k, _MISSING) is not v}
        kept: dict[str, bytes] = {}
        skipped: list[str] = []
        for key, item in changed.items():
            try:
                kept[key] = cloudpickle.dumps(item)
            except Exception:  # any object may refuse pickling in its own way; it stays behind, named
                skipped.append(key)
        try:
            shipped_value = cloudpickle.dumps(value)
        except Exception:
            shipped_value, skipped = cloudpickle.dumps(None), [*skipped, "(the cell's value)"]
        return kept, shipped_value, skipped

    def shipped(self) -> bytes:
        """The task pickled with only the globals its code uses; any that cannot be pickled is named."""
        used = _global_names(compile_cell(self.source, self.name))
        sent = {k: v for k, v in self.namespace.items() if k in used}
        task = CellTask(self.source, sent, self.name, self.settings, self.save_code)
        return _pickle_or_name(task, {f"global {k!r}": v for k, v in sent.items()})


_MISSING = object()


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args, **kwargs))
    return fn(*args, **kwargs)


def task_name(fn: Callable[..., Any]) -> str:
    """The task name of a function: its ``__name__`` (a callable object's type name)."""
    return getattr(fn, "__name__", type(fn).__name__)


def compile_cell(source: str, name: str) -> tuple[Any, Any]:
    """The code as (body, last expression or None), like a notebook cell."""
    import ast

    tree = ast.parse(source, filename=f"<{name}>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body[-1].value), f"<{name}>", "eval")
        tree.body.pop()
    return compile(tree, f"<{name}>", "exec"), last


def _global_names(code: tuple[Any, Any]) -> set[str]:
    """Every global name the code (and the functions and classes it defines) may read."""
    names: set[str] = set()
    stack = [c for c in code if c is not None]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if inspect.iscode(c))
    return names


def _pickle_or_name(task: Any, parts: Mapping[str, Any]) -> bytes:
    try:
        shipped: bytes = cloudpickle.dumps(task)
        return shipped
    except Exception as error:
        culprits = []
        for label, value in parts.items():
            try:
                cloudpickle.dumps(value)
            except Exception as reason:
                culprits.append(f"{label} ({type(value).__name__}: {type(reason).__name__}: {reason})")
        what = "; ".join(culprits) or f"{type(error).__name__}: {error}"
        raise LaunchError(
            f"cannot send to the ranks, because it cannot be pickled: {what}. Create it inside the function or "
            "cell instead, or launch with start_method='fork' (Linux), where ranks inherit it"
        ) from error
