"""The sweep builder: a form that writes a W&B sweep config, checked as it is typed, and launches it.

Every field maps to one key of the config; the validator of :mod:`wandbflow.sweeps.validate` checks what the form
describes after each change, and each error is shown next to the field its key path names. The config a valid form
describes is what ``wandb.sweep`` would receive, with W&B's implicit defaults written out (a range names its
``distribution``, a metric its ``goal``, hyperband its ``eta``), so ``SweepBuilder.from_config(c).config == c`` for
every such config the form can express.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
import traitlets

from wandbflow.errors import SweepConfigError, WandbflowError
from wandbflow.sweeps import yamlio
from wandbflow.sweeps.spec import METHODS
from wandbflow.sweeps.validate import load_config, validate
from wandbflow.widgets.monitor import SweepMonitor

#: The kinds of a parameter row: key -> label.
KINDS = {
    "value": "fixed value",
    "values": "list of values",
    "int": "int range",
    "float": "float range",
    "log": "log range",
}
# The distribution each range kind writes, without and with a step q.
_RANGES = {
    "int": ("int_uniform", None),
    "float": ("uniform", "q_uniform"),
    "log": ("log_uniform_values", "q_log_uniform_values"),
}
_KIND_OF = {
    "constant": "value",
    "categorical": "values",
    "int_uniform": "int",
    "uniform": "float",
    "q_uniform": "float",
    "log_uniform_values": "log",
    "q_log_uniform_values": "log",
}
# The top-level keys the form has a field for.
_FIELDS = ("method", "metric", "parameters", "early_terminate", "run_cap", "name", "project")
_INT = re.compile(r"[-+]?[0-9]+")
_ERROR_STYLE = "color: #c62828; font-size: 0.9em"


class ParamRow(widgets.HBox):  # type: ignore[misc]  # ipywidgets has no type hints
    """One row of the builder's parameter table: a dotted name, a kind, and the kind's fields.

    ``optimizer.lr`` nests ``lr`` under ``optimizer``. Values are typed as YAML (``0.1, 1e-3, adam``); ranges take
    ``min``, ``max`` and, for float and log ranges, an optional step ``q``.
    """

    def __init__(self, name: str = "", kind: str = "values", **fields: str) -> None:
        self.name_text = widgets.Text(name, placeholder="name (a.b nests b in a)", layout={"width": "170px"})
        self.kind_select = widgets.Dropdown(
            options=[(label, key) for key, label in KINDS.items()], value=kind, layout={"width": "130px"}
        )
        self.value_text = widgets.Text(fields.get("value", ""), placeholder="value", layout={"width": "200px"})
        self.values_text = widgets.Text(
            fields.get("values", ""), placeholder="values, comma separated", layout={"width": "260px"}
        )
        self.min_text = widgets.Text(fields.get("min", ""), placeholder="min", layout={"width": "90px"})
        self.max_text = widgets.Text(fields.get("max", ""), placeholder="max", layout={"width": "90px"})
        self.q_text = widgets.Text(fields.get("q", ""), placeholder="q (step)", layout={"width": "80px"})
        self.remove_button = widgets.Button(icon="trash", tooltip="remove this parameter", layout={"width": "40px"})
        self.error_html = widgets.HTML()
        super().__init__()
        self.kind_select.observe(self._arrange, names="value")
        self._arrange()

    @property
    def inputs(self) -> tuple[widgets.ValueWidget, ...]:
        """Every input of the row (what the builder watches)."""
        return (
            self.name_text,
            self.kind_select,
            self.value_text,
            self.values_text,
            self.min_text,
            self.max_text,
            self.q_text,
        )

    def _arrange(self, change: Any = None) -> None:
        kind = self.kind_select.value
        fields: tuple[widgets.Widget, ...]
        if kind == "value":
            fields = (self.value_text,)
        elif kind == "values":
            fields = (self.values_text,)
        elif kind == "int":
            fields = (self.min_text, self.max_text)
        else:
            fields = (self.min_text, self.max_text, self.q_text)
        self.children = (self.name_text, self.kind_select, *fields, self.remove_button, self.error_html)

    def key(self, position: int) -> str:
        """The row's key path in the config (``parameters.a.parameters.b``); by position when the name is bad."""
        parts = self.name_text.value.strip().split(".")
        if not all(parts):
            return f"parameters.<row {position + 1}>"
        return "parameters." + ".parameters.".join(parts)

    def spec(self, position: int) -> dict[str, Any]:
        """The parameter's spec in W&B's format, with its distribution explicit for ranges.

        Raises:
            SweepConfigError: A field that does not parse, keyed by the row's key path and the field.
        """
        key = self.key(position)
        if key.startswith("parameters.<"):
            raise SweepConfigError("a name is required, and each part of a dotted name must be non-empty", key=key)
        kind = self.kind_select.value
        if kind == "value":
            return {"value": _yaml(self.value_text.value, f"{key}.value")}
        if kind == "values":
            values = _yaml(f"[{self.values_text.value}]", f"{key}.values")
            return {"values": values}
        plain, stepped = _RANGES[kind]
        low = _number(self.min_text.value, f"{key}.min", integer=kind == "int")
        high = _number(self.max_text.value, f"{key}.max", integer=kind == "int")
        if kind == "int" or not self.q_text.value.strip():
            return {"distribution": plain, "min": low, "max": high}
        return {"distribution": stepped, "min": low, "max": high, "q": _number(self.q_text.value, f"{key}.q")}


class SweepBuilder(widgets.VBox):  # type: ignore[misc]
    """A form for a W&B sweep config with a live YAML preview, inline errors, and Launch.

    ``config`` is the config the form describes when it is valid, else None (and ``errors`` says why, by key path).
    Launch runs ``function`` (set it, or pass it) in a background thread, or, when a notebook path is filled in,
    that notebook as the trials; the :class:`SweepMonitor` it returns is shown under the form.

    Example:
        >>> b = SweepBuilder.from_yaml("sweep.yaml")  # doctest: +SKIP
        >>> b.launch(objective, count=20)  # doctest: +SKIP
    """

    config = traitlets.Dict(
        None, allow_none=True, read_only=True, help="The valid sweep config the form describes, or None."
    )
    errors = traitlets.Dict(read_only=True, help="Every error the form shows: dotted key path -> message.")
    yaml = traitlets.Unicode(read_only=True, help="The YAML preview of what the form describes.")
    function = traitlets.Any(None, allow_none=True, help="The objective the Launch button runs (no notebook given).")
    notebook = traitlets.Unicode("", help="The trial notebook the Launch button runs, if any (its field's text).")
    monitor = traitlets.Instance(
        SweepMonitor, allow_none=True, read_only=True, help="The monitor of the last launch, if any."
    )

    def __init__(self, function: Callable[[], Any] | None = None) -> None:
        """Make an empty form (method random, one parameter row).

        Args:
            function: The objective the Launch button runs when no notebook is given.
        """
        self._quiet = True
        self.method_select = widgets.Dropdown(options=METHODS, value="random", description="method")
        self.metric_text = widgets.Text(description="metric", placeholder="name as logged")
        self.goal_select = widgets.Dropdown(options=["minimize", "maximize"], value="minimize", description="goal")
        self.target_text = widgets.Text(description="target", placeholder="optional")
        self.rows_box = widgets.VBox()
        self.add_button = widgets.Button(description="add parameter", icon="plus")
        self.hyperband_check = widgets.Checkbox(False, description="hyperband early termination", indent=False)
        self.min_iter_text = widgets.Text(description="min_iter", placeholder="e.g. 3")
        self.eta_text = widgets.Text("3", description="eta")
        self.run_cap_text = widgets.Text(description="run cap", placeholder="optional")
        self.name_text = widgets.Text(description="name", placeholder="optional")
        self.project_text = widgets.Text(description="project", placeholder="optional")
        self.notebook_text = widgets.Text(description="notebook", placeholder="trial notebook (else the function)")
        self.count_input = widgets.BoundedIntText(10, min=1, max=100_000, description="count")
        self.parallel_input = widgets.BoundedIntText(1, min=1, max=64, description="parallel")
        self.launch_button = widgets.Button(description="Launch", button_style="success", icon="play", disabled=True)
        self.preview_html = widgets.HTML()
        self.labels = {key: widgets.HTML() for key in (*_FIELDS, "config")}
        self.monitor_box = widgets.VBox()
        super().__init__()
        self.function = function
        traitlets.link((self.notebook_text, "value"), (self, "notebook"))
        self.children = (
            widgets.HBox((self.method_select, self.labels["method"])),
            widgets.HBox((self.metric_text, self.goal_select, self.target_text, self.labels["metric"])),
            widgets.HTML("<b>parameters</b>"),
            self.rows_box,
            widgets.HBox((self.add_button, self.labels["parameters"])),
            widgets.HBox((self.hyperband_check, self.min_iter_text, self.eta_text, self.labels["early_terminate"])),
            widgets.HBox((self.run_cap_text, self.labels["run_cap"])),
            widgets.HBox((self.name_text, self.labels["name"], self.project_text, self.labels["project"])),
            widgets.Accordion((self.preview_html,), titles=("YAML preview",), selected_index=0),
            widgets.HBox((self.notebook_text, self.count_input, self.parallel_input, self.launch_button)),
            self.labels["config"],
            self.monitor_box,
        )
        for field in self._inputs():
            field.observe(self._changed, names="value")
        self.add_button.on_click(lambda _: self.add_row())
        self.launch_button.on_click(lambda _: self._launch_clicked())
        self.add_row()
        self._quiet = False
        self._update()

    # ---- the form -------------------------------------------------------------------------------------------------

    @property
    def rows(self) -> tuple[ParamRow, ...]:
        """The parameter rows, in order."""
        return tuple(row for row in self.rows_box.children if isinstance(row, ParamRow))

    def add_row(self, name: str = "", kind: str = "values", **fields: str) -> ParamRow:
        """Add a parameter row.

        Args:
            name: The dotted parameter name.
            kind: One of :data:`KINDS`.
            **fields: Initial text of the row's fields: value, values, min, max, q.

        Returns:
            The new row.
        """
        row = ParamRow(name, kind, **fields)
        for field in row.inputs:
            field.observe(self._changed, names="value")
        row.remove_button.on_click(lambda _: self.remove_row(row))
        self.rows_box.children = (*self.rows_box.children, row)
        self._changed()
        return row

    def remove_row(self, row: ParamRow) -> None:
        """Remove a parameter row."""
        self.rows_box.children = tuple(r for r in self.rows_box.children if r is not row)
        self._changed()

    def _inputs(self) -> tuple[widgets.ValueWidget, ...]:
        return (
            self.method_select,
            self.metric_text,
            self.goal_select,
            self.target_text,
            self.hyperband_check,
            self.min_iter_text,
            self.eta_text,
            self.run_cap_text,
            self.name_text,
            self.project_text,
        )

    @traitlets.observe("function", "notebook")
    def _changed(self, change: Any = None) -> None:
        if not self._quiet:
            self._update()

    def _update(self) -> None:
        """Re-read the form: the config it describes and its errors; show them, the preview, and Launch's state."""
        errors: dict[str, str] = {}
        data = self._describe(errors)
        if not errors:
            try:
                validate(data)
            except SweepConfigError as error:
                errors[_key(error)] = _message(error)
        with self.hold_trait_notifications():
            self.set_trait("config", None if errors else data)
            self.set_trait("errors", errors)
            self.set_trait("yaml", yamlio.dump(data))
        self._render()

    def _describe(self, errors: dict[str, str]) -> dict[str, Any]:
        """The config the form describes, leaving out the fields that do not parse (their errors go in ``errors``)."""
        data: dict[str, Any] = {"method": self.method_select.value}
        metric = self.metric_text.value.strip()
        target = _optional(self.target_text.value, "metric.target", errors)
        if metric or target is not None:
            data["metric"] = {"name": metric, "goal": self.goal_select.value}
            if target is not None:
                data["metric"]["target"] = target
        data["parameters"] = self._parameters(errors)
        if self.hyperband_check.value:
            data["early_terminate"] = {"type": "hyperband"}
            for name, text in (("min_iter", self.min_iter_text.value), ("eta", self.eta_text.value)):
                value = _optional(text, f"early_terminate.{name}", errors, integer=True)
                if value is not None:
                    data["early_terminate"][name] = value
        run_cap = _optional(self.run_cap_text.value, "run_cap", errors, integer=True)
        if run_cap is not None:
            data["run_cap"] = run_cap
        for key, field in (("name", self.name_text), ("project", self.project_text)):
            if field.value.strip():
                data[key] = field.value.strip()
        return data

    def _parameters(self, errors: dict[str, str]) -> dict[str, Any]:
        """The nested parameters of the rows; each row is checked on its own, so every row shows its own error."""
        tree: dict[str, Any] = {}
        for position, row in enumerate(self.rows):
            key = row.key(position)
            try:
                spec = row.spec(position)
                path = row.name_text.value.strip().split(".")
                validate({"method": "random", "parameters": _nest(path, spec)})
                _insert(tree, path, spec, key)
            except SweepConfigError as error:
                errors[_key(error)] = _message(error)
        return tree

    def _render(self) -> None:
        """Show the preview, every error next to its field, and whether Launch can run."""
        state = "valid" if self.config is not None else "invalid"
        self.preview_html.value = f"<i>{state}</i><pre>{html.escape(self.yaml)}</pre>"
        shown: dict[widgets.HTML, list[str]] = {}
        row_keys = {row.key(position): row for position, row in enumerate(self.rows)}
        for key, message in self.errors.items():
            shown.setdefault(self._label(key, row_keys), []).append(
                f"<b>{html.escape(key)}</b>: {html.escape(message)}"
            )
        for label in (*self.labels.values(), *(row.error_html for row in self.rows)):
            lines = shown.get(label, [])
            label.value = f"<span style='{_ERROR_STYLE}'>{'<br>'.join(lines)}</span>" if lines else ""
        runnable = self.function is not None or bool(self.notebook.strip())
        self.launch_button.disabled = self.config is None or not runnable
        self.launch_button.tooltip = (
            "fix the errors shown first"
            if self.config is None
            else "set .function or fill in a notebook"
            if not runnable
            else "create the sweep and run it"
        )

    def _label(self, key: str, rows: Mapping[str, ParamRow]) -> widgets.HTML:
        """The label next to the field an error's key path names: its row, else its section, else the form's."""
        matches = [k for k in rows if key == k or key.startswith(f"{k}.")]
        if matches:
            return rows[max(matches, key=len)].error_html
        return self.labels.get(key.split(".")[0], self.labels["config"])

    @traitlets.validate("function")
    def _check_function(self, proposal: Any) -> Any:
        if proposal["value"] is not None and not callable(proposal["value"]):
            raise traitlets.TraitError(f"function must be callable (got {proposal['value']!r})")
        return proposal["value"]

    # ---- configs in and out ----------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SweepBuilder:
        """A builder showing a sweep config.

        Args:
            config: A sweep config the form can express: method, metric, parameters with value, values (without
                probabilities), int_uniform, uniform, q_uniform, log_uniform_values or q_log_uniform_values
                (explicit or implied by min/max), hyperband with min_iter and eta, run_cap, name, project.

        Returns:
            The builder; its ``config`` is ``config`` with W&B's implicit defaults written out.

        Raises:
            SweepConfigError: The config is invalid, or the form has no field for one of its keys.
        """
        checked = validate(config)
        raw = checked.to_dict()
        for key in raw:
            if key not in _FIELDS:
                raise SweepConfigError("the builder has no field for this key", key=key)
        hyperband = raw.get("early_terminate") or {}
        for key in hyperband:
            if key not in ("type", "min_iter", "eta"):
                raise SweepConfigError(
                    "the builder takes hyperband with min_iter and eta only", key=f"early_terminate.{key}"
                )
        builder = cls()
        builder._quiet = True
        builder.method_select.value = raw["method"]
        metric = raw.get("metric") or {}
        builder.metric_text.value = metric.get("name", "")
        builder.goal_select.value = metric.get("goal", "minimize")
        builder.target_text.value = _text(metric["target"]) if metric.get("target") is not None else ""
        builder.hyperband_check.value = bool(hyperband)
        builder.min_iter_text.value = _text(hyperband["min_iter"]) if "min_iter" in hyperband else ""
        builder.eta_text.value = _text(hyperband.get("eta", 3))
        builder.run_cap_text.value = _text(raw["run_cap"]) if "run_cap" in raw else ""
        builder.name_text.value = raw.get("name", "")
        builder.project_text.value = raw.get("project", "")
        builder.rows_box.children = ()
        for param in checked.params:
            if any("." in part for part in param.path):
                raise SweepConfigError("a name with a dot cannot be told from nesting in the builder", key=param.key)
            kind = _KIND_OF.get(param.distribution)
            if kind is None or param.probabilities is not None:
                what = "probabilities" if kind else f"distribution {param.distribution}"
                raise SweepConfigError(f"the builder cannot express {what}", key=param.key)
            fields: dict[str, str] = {}
            if kind == "value":
                fields["value"] = _values_text([param.value])
            elif kind == "values":
                fields["values"] = _values_text(list(param.values))
            else:
                fields.update(min=_text(param.min), max=_text(param.max))
                if param.distribution.startswith("q_"):
                    fields["q"] = _text(param.q)
            builder.add_row(param.name, kind, **fields)
        builder._quiet = False
        builder._update()
        return builder

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SweepBuilder:
        """A builder showing the sweep config of a YAML file (read as ``wandb sweep`` reads it).

        Raises:
            SweepConfigError: The file cannot be read, is invalid, or holds what the form cannot express.
        """
        return cls.from_config(load_config(path).to_dict())

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as YAML, written to ``path`` when given.

        Raises:
            SweepConfigError: The form is invalid (the first error it shows).
        """
        self._valid()
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.yaml)
        return self.yaml

    # ---- launching ------------------------------------------------------------------------------------------------

    def launch(self, function: Callable[[], Any] | None = None, *, count: int | None = None) -> SweepMonitor:
        """Create the sweep and run ``function`` as its trials in a background thread of this process.

        The function reads its parameters from the trial run's config (``get_wandb_run().config``), as with
        :func:`wandbflow.agent`; it can use the notebook's state, and the notebook stays usable meanwhile.

        Args:
            function: The objective; by default :attr:`function`.
            count: The most trials to run; None: until the sweep has no more to hand out.

        Returns:
            The monitor, also shown under the form.

        Raises:
            SweepConfigError: The form is invalid.
            ConfigError: No function given.
        """
        from wandbflow.errors import ConfigError
        from wandbflow.sweeps import sweep

        function = function or self.function
        if function is None:
            raise ConfigError("give the objective to launch (or set the builder's function)", key="function")
        monitor = SweepMonitor(sweep(self._valid()), count=count)
        monitor.serve(function, count=count)
        self._show(monitor)
        return monitor

    def launch_notebook(
        self, notebook: str | os.PathLike[str], *, count: int | None = None, parallel: int = 1
    ) -> SweepMonitor:
        """Create the sweep (local engine) and run ``notebook`` as its trials, each in its own kernel.

        Args:
            notebook: The trial notebook; its cell tagged ``parameters`` defines the swept names.
            count: The most trials to run; None: until the sweep has no more to hand out.
            parallel: How many trials run at once.

        Returns:
            The monitor, also shown under the form.

        Raises:
            SweepConfigError: The form is invalid.
        """
        from wandbflow.sweeps import sweep

        monitor = SweepMonitor(sweep(self._valid(), engine="local"), count=count)
        monitor.serve_notebook(notebook, count=count, parallel=parallel)
        self._show(monitor)
        return monitor

    def _launch_clicked(self) -> None:
        notebook = self.notebook.strip()
        try:
            if notebook:
                self.launch_notebook(notebook, count=self.count_input.value, parallel=self.parallel_input.value)
            else:
                self.launch(count=self.count_input.value)
        except WandbflowError as error:  # shown where the user clicked; the form stays as it was
            self.labels["config"].value = f"<span style='{_ERROR_STYLE}'>{html.escape(str(error))}</span>"

    def _show(self, monitor: SweepMonitor) -> None:
        self.set_trait("monitor", monitor)
        self.monitor_box.children = (monitor,)

    def _valid(self) -> dict[str, Any]:
        if self.config is None:
            key, message = next(iter(self.errors.items()))
            raise SweepConfigError(message, key=key)
        return dict(self.config)


def _key(error: SweepConfigError) -> str:
    """The dotted key path the error names."""
    return str(getattr(error, "key", "config"))


def _message(error: SweepConfigError) -> str:
    """The message without the key path it starts with (the form shows the key itself)."""
    return str(error).removeprefix(f"{_key(error)}: ")


def _number(text: str, key: str, *, integer: bool = False) -> int | float:
    """An int when the text is one, else a finite float."""
    text = text.strip()
    if not text:
        raise SweepConfigError("required", key=key)
    if _INT.fullmatch(text):
        return int(text)
    if integer:
        raise SweepConfigError(f"must be an integer (got {text!r})", key=key)
    try:
        value = float(text)
    except ValueError:
        raise SweepConfigError(f"must be a number (got {text!r})", key=key) from None
    if not math.isfinite(value):
        raise SweepConfigError(f"must be finite (got {text!r})", key=key)
    return value


def _optional(text: str, key: str, errors: dict[str, str], *, integer: bool = False) -> int | float | None:
    """The number in an optional field; None when empty or bad (its error then goes in ``errors``)."""
    if not text.strip():
        return None
    try:
        return _number(text, key, integer=integer)
    except SweepConfigError as error:
        errors[key] = _message(error)
        return None


def _yaml(text: str, key: str) -> Any:
    """YAML text as data, numbers read as W&B reads them (``1e-4`` is a float)."""
    import yaml

    if not text.strip() or text.strip() == "[]":
        raise SweepConfigError("required", key=key)
    try:
        return yaml.load(text, Loader=yamlio.loader())  # a SafeLoader
    except yaml.YAMLError as error:
        raise SweepConfigError(f"not valid YAML: {error}", key=key) from None


def _values_text(values: list[Any]) -> str:
    """Values as the comma-separated text a row reads back to the same values: bare where that is unambiguous."""
    bare = ", ".join(v if isinstance(v, str) else json.dumps(v) for v in values)
    try:
        same = json.dumps(_yaml(f"[{bare}]", "values")) == json.dumps(values)
    except SweepConfigError:
        same = False
    return bare if same else ", ".join(json.dumps(v) for v in values)


def _text(number: Any) -> str:
    return repr(number)


def _nest(path: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"parameters": {"b": spec}}}`` for the path ``a.b``."""
    node: dict[str, Any] = {path[-1]: spec}
    for part in reversed(path[:-1]):
        node = {part: {"parameters": node}}
    return node


def _insert(tree: dict[str, Any], path: list[str], spec: dict[str, Any], key: str) -> None:
    """Put a row's spec into the parameter tree, refusing a name used twice or both as a leaf and a branch."""
    node = tree
    for depth, part in enumerate(path[:-1]):
        branch = node.setdefault(part, {"parameters": {}})
        if "parameters" not in branch:
            raise SweepConfigError(f"{'.'.join(path[: depth + 1])} is a parameter, so it cannot nest others", key=key)
        node = branch["parameters"]
    if path[-1] in node:
        what = "nests other parameters" if "parameters" in node[path[-1]] else "is used twice"
        raise SweepConfigError(f"the name {'.'.join(path)} {what}", key=key)
    node[path[-1]] = spec
