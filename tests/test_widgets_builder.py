"""The sweep builder driven through its widgets: the config it describes, errors by key path, Launch, round trips."""

from __future__ import annotations

import html

import pytest
import traitlets

from wandbflow.errors import SweepConfigError
from wandbflow.sweeps import load_config
from wandbflow.widgets import SweepBuilder
from wandbflow.widgets.builder import ParamRow


def fill(builder: SweepBuilder, row: ParamRow, name: str, kind: str, **fields: str) -> None:
    row.name_text.value = name
    row.kind_select.value = kind
    for field, text in fields.items():
        getattr(row, f"{field}_text").value = text


def shown(builder: SweepBuilder) -> str:
    """Every error text the form shows, wherever it is shown."""
    labels = [*builder.labels.values(), *(row.error_html for row in builder.rows)]
    return " ".join(label.value for label in labels)


def test_a_new_form_is_invalid_and_cannot_launch():
    builder = SweepBuilder(function=lambda: None)
    assert builder.config is None
    assert list(builder.errors) == ["parameters.<row 1>"]
    assert "a name is required" in builder.rows[0].error_html.value
    assert builder.launch_button.disabled


def test_filling_the_form_describes_the_config_and_enables_launch():
    builder = SweepBuilder()
    builder.method_select.value = "bayes"
    builder.metric_text.value = "val/loss"
    builder.target_text.value = "0.05"
    fill(builder, builder.rows[0], "lr", "log", min="1e-4", max="0.1")
    fill(builder, builder.add_row(), "optimizer.name", "values", values="adam, sgd")
    fill(builder, builder.add_row(), "optimizer.momentum", "float", min="0", max="0.99", q="0.01")
    fill(builder, builder.add_row(), "layers", "int", min="1", max="4")
    fill(builder, builder.add_row(), "epochs", "value", value="5")
    builder.hyperband_check.value = True
    builder.min_iter_text.value = "2"
    builder.run_cap_text.value = "20"
    builder.name_text.value = "lr-search"
    assert builder.errors == {}
    assert builder.config == {
        "method": "bayes",
        "metric": {"name": "val/loss", "goal": "minimize", "target": 0.05},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1},
            "optimizer": {
                "parameters": {
                    "name": {"values": ["adam", "sgd"]},
                    "momentum": {"distribution": "q_uniform", "min": 0, "max": 0.99, "q": 0.01},
                }
            },
            "layers": {"distribution": "int_uniform", "min": 1, "max": 4},
            "epochs": {"value": 5},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        "run_cap": 20,
        "name": "lr-search",
    }
    assert load_config(builder.config).to_dict() == builder.config  # what the validator accepts, unchanged
    assert "optimizer:\n    parameters:\n      name:" in builder.yaml
    assert "<i>valid</i>" in builder.preview_html.value
    assert builder.launch_button.disabled  # valid, but nothing to launch yet
    builder.function = lambda: None
    assert not builder.launch_button.disabled
    builder.function = None
    builder.notebook_text.value = "train.ipynb"
    assert not builder.launch_button.disabled


@pytest.mark.parametrize(
    ("rows", "settings", "key", "where"),
    [
        ([("a.b", "float", {"min": "1", "max": "0.5"})], {}, "parameters.a.parameters.b.max", 0),
        ([("a", "float", {"min": "x", "max": "1"})], {}, "parameters.a.min", 0),
        ([("a", "int", {"min": "0.5", "max": "1"})], {}, "parameters.a.min", 0),
        ([("a", "log", {"min": "0", "max": "1"})], {}, "parameters.a.min", 0),
        ([("a", "values", {"values": ""})], {}, "parameters.a.values", 0),
        ([("a", "values", {"values": "[1, 2"})], {}, "parameters.a.values", 0),
        ([("a..b", "value", {"value": "1"})], {}, "parameters.<row 1>", 0),
        ([("a", "float", {"min": "0", "max": "1"})], {"method": "grid"}, "parameters.a", 0),
        ([("a", "value", {"value": "1"})], {"method": "bayes"}, "metric", "metric"),
        ([("a", "value", {"value": "1"})], {"target": "low"}, "metric.target", "metric"),
        ([("a", "value", {"value": "1"})], {"target": "1"}, "metric.name", "metric"),
        ([("a", "value", {"value": "1"})], {"hyperband": True, "min_iter": "3"}, "metric", "metric"),
        (
            [("a", "value", {"value": "1"})],
            {"hyperband": True, "min_iter": "", "metric": "loss"},
            "early_terminate",
            "early_terminate",
        ),
        ([("a", "value", {"value": "1"})], {"metric": "loss", "hyperband": True, "eta": "1"}, None, "early_terminate"),
        ([("a", "value", {"value": "1"})], {"run_cap": "0"}, "run_cap", "run_cap"),
        ([("a", "value", {"value": "1"})], {"run_cap": "2.5"}, "run_cap", "run_cap"),
        ([("a", "value", {"value": "1"}), ("a", "value", {"value": "2"})], {}, "parameters.a", 1),
        ([("a", "value", {"value": "1"}), ("a.b", "value", {"value": "2"})], {}, "parameters.a.parameters.b", 1),
        ([("a.b", "value", {"value": "1"}), ("a", "value", {"value": "2"})], {}, "parameters.a", 1),
    ],
)
def test_each_error_is_shown_next_to_its_field_by_key_path(rows, settings, key, where):
    builder = SweepBuilder(function=lambda: None)
    builder.rows_box.children = ()
    for name, kind, fields in rows:
        fill(builder, builder.add_row(), name, kind, **fields)
    fields = {
        "method": builder.method_select,
        "metric": builder.metric_text,
        "target": builder.target_text,
        "hyperband": builder.hyperband_check,
        "min_iter": builder.min_iter_text,
        "eta": builder.eta_text,
        "run_cap": builder.run_cap_text,
    }
    for name, value in settings.items():
        fields[name].value = value
    assert builder.config is None
    assert builder.launch_button.disabled
    assert len(builder.errors) == 1
    (found,) = builder.errors
    if key is not None:
        assert found == key
    label = builder.rows[where].error_html if isinstance(where, int) else builder.labels[where]
    assert f"<b>{html.escape(found)}</b>" in label.value
    assert shown(builder).count("<b>") == 1  # shown once, there


def test_every_bad_row_shows_its_own_error_at_once():
    builder = SweepBuilder()
    fill(builder, builder.rows[0], "a", "float", min="1", max="0")
    fill(builder, builder.add_row(), "b", "int", min="1", max="x")
    fill(builder, builder.add_row(), "c", "value", value="3")
    assert set(builder.errors) == {"parameters.a.max", "parameters.b.max"}
    assert "parameters.a.max" in builder.rows[0].error_html.value
    assert "parameters.b.max" in builder.rows[1].error_html.value
    assert builder.rows[2].error_html.value == ""


def test_rows_are_added_and_removed_with_their_buttons():
    builder = SweepBuilder()
    fill(builder, builder.rows[0], "a", "value", value="1")
    builder.add_button.click()
    assert len(builder.rows) == 2 and builder.config is None  # the new row has no name yet
    builder.rows[1].remove_button.click()
    assert len(builder.rows) == 1
    assert builder.config == {"method": "random", "parameters": {"a": {"value": 1}}}
    builder.rows[0].remove_button.click()
    assert builder.errors.keys() == {"parameters"} and "parameters" in builder.labels["parameters"].value


def test_a_row_shows_only_the_fields_of_its_kind():
    row = ParamRow("a", "values")
    assert row.values_text in row.children and row.min_text not in row.children
    row.kind_select.value = "int"
    assert row.min_text in row.children and row.q_text not in row.children
    row.kind_select.value = "log"
    assert {row.min_text, row.max_text, row.q_text} <= set(row.children)


def test_function_must_be_callable():
    with pytest.raises(traitlets.TraitError):
        SweepBuilder().function = 3


# Configs the form can express, with W&B's implicit defaults written out (a range's distribution, the metric's
# goal, hyperband's eta, a q distribution's q): from_config(c).config == c.
CORPUS = [
    {"method": "random", "parameters": {"x": {"value": 1}}},
    {"method": "grid", "parameters": {"x": {"values": [1, 2, 3]}, "y": {"values": ["a", "b"]}}},
    {
        "method": "random",
        "parameters": {
            "s": {"value": "adam"},
            "b": {"values": [True, False]},
            "n": {"value": None},
            "f": {"values": [1e-05, 0.5, 2.0, 1, "1e-4", "x, y", "[1]", "yes", "null"]},
            "lists": {"values": [[1, 2], [3, 4]]},
            "mapping": {"value": {"depth": 3, "act": "relu"}},
        },
    },
    {
        "method": "bayes",
        "metric": {"name": "val/acc", "goal": "maximize", "target": 0.99},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-05, "max": 0.1},
            "lr_q": {"distribution": "q_log_uniform_values", "min": 1, "max": 1024, "q": 8},
            "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
            "width": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.125},
            "layers": {"distribution": "int_uniform", "min": -2, "max": 12},
        },
        "run_cap": 50,
    },
    {
        "method": "random",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {
            "optimizer": {
                "parameters": {
                    "name": {"values": ["adam", "sgd"]},
                    "args": {"parameters": {"beta": {"distribution": "uniform", "min": 0.8, "max": 0.999}}},
                }
            },
            "epochs": {"value": 10},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 2},
        "name": "nested",
        "project": "demo",
    },
    {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize", "target": 1},
        "parameters": {"q": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2.5}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
    },
]


@pytest.mark.parametrize("config", CORPUS, ids=range(len(CORPUS)))
def test_round_trip_over_the_corpus(config, tmp_path):
    assert load_config(config).to_dict() == config  # every corpus entry is valid
    builder = SweepBuilder.from_config(config)
    assert builder.errors == {}
    assert builder.config == config
    path = tmp_path / "sweep.yaml"
    assert builder.to_yaml(path) == path.read_text()
    assert SweepBuilder.from_yaml(path).config == config


@pytest.mark.parametrize(
    ("implicit", "explicit"),
    [
        ({"min": 1, "max": 4}, {"distribution": "int_uniform", "min": 1, "max": 4}),
        ({"min": 0.1, "max": 1}, {"distribution": "uniform", "min": 0.1, "max": 1}),
        ({"distribution": "q_uniform", "min": 0, "max": 4}, {"distribution": "q_uniform", "min": 0, "max": 4, "q": 1}),
        ({"distribution": "categorical", "values": [1]}, {"values": [1]}),
        ({"distribution": "constant", "value": 1}, {"value": 1}),
    ],
)
def test_implicit_defaults_are_made_explicit(implicit, explicit):
    given = {"method": "random", "metric": {"name": "m"}, "parameters": {"p": implicit}}
    given["early_terminate"] = {"type": "hyperband", "min_iter": 2}
    assert SweepBuilder.from_config(given).config == {
        "method": "random",
        "metric": {"name": "m", "goal": "minimize"},
        "parameters": {"p": explicit},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
    }


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"method": "random", "parameters": {"x": {"distribution": "normal"}}}, "parameters.x"),
        ({"method": "random", "parameters": {"x": {"values": [1, 2], "probabilities": [0.5, 0.5]}}}, "parameters.x"),
        (
            {"method": "random", "parameters": {"x": {"distribution": "log_uniform", "min": 0, "max": 1}}},
            "parameters.x",
        ),
        ({"method": "random", "parameters": {"a.b": {"value": 1}}}, "parameters.a.b"),
        ({"method": "random", "parameters": {"x": {"value": 1}}, "description": "d"}, "description"),
        (
            {
                "method": "random",
                "metric": {"name": "m"},
                "parameters": {"x": {"value": 1}},
                "early_terminate": {"type": "hyperband", "max_iter": 9, "s": 2},
            },
            "early_terminate.max_iter",
        ),
        ({"method": "random", "parameters": {"x": {"min": 1, "max": 0}}}, "parameters.x.max"),  # invalid
    ],
)
def test_configs_the_form_cannot_express_are_refused_by_key(config, key):
    with pytest.raises(SweepConfigError) as raised:
        SweepBuilder.from_config(config)
    assert raised.value.key == key


def test_to_yaml_refuses_an_invalid_form(tmp_path):
    builder = SweepBuilder()
    with pytest.raises(SweepConfigError) as raised:
        builder.to_yaml(tmp_path / "x.yaml")
    assert raised.value.key == "parameters.<row 1>"
    assert not (tmp_path / "x.yaml").exists()


def test_launch_refuses_an_invalid_form():
    with pytest.raises(SweepConfigError):
        SweepBuilder().launch(lambda: None, count=1)
