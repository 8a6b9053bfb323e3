"""cluster/grafana/rayagg-dashboard.json, the Grafana dashboard of rayagg's Prometheus
metrics (docs/grafana.md): a well-formed dashboard whose queries use only the names rayagg
exports, every one of them, each filtered on the run. Pure: reads JSON, imports no Ray
(rayagg.runtime.telemetry imports Ray only when a RaySink is made)."""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from rayagg.runtime.telemetry import COUNTER, METRICS

ROOT = pathlib.Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "cluster" / "grafana" / "rayagg-dashboard.json"
DOC = ROOT / "docs" / "grafana.md"
PANEL_TYPES = {"timeseries", "stat"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

NAME = re.compile(r"\bray_rayagg_\w+")
# A metric name with its label matchers, if any: "ray_rayagg_x{run=~\"$run\", tier=\"edge\"}".
SELECTOR = re.compile(r"\b(ray_rayagg_\w+)\s*(\{[^}]*\})?")
RUN_FILTER = 'run=~"$run"'
RATE = re.compile(r"\b(?:rate|irate|increase)\(\s*(ray_rayagg_\w+)")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def exported(name: str) -> str:
    """The METRICS key of an exported name: Ray adds ``ray_`` (rayagg's counters already end
    in ``_total``, so Ray adds no suffix)."""
    assert name.startswith("ray_"), name
    return name[len("ray_"):]


def test_it_is_a_dashboard_with_the_datasource_and_run_variables(dashboard):
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    run = variables["run"]
    assert run["type"] == "query" and run["datasource"] == DATASOURCE
    assert run["definition"] == run["query"]["query"] == "label_values(ray_rayagg_last_round, run)"
    for variable in variables.values():  # a variable's own query uses exported names too
        for name in NAME.findall(json.dumps(variable.get("query", ""))):
            assert exported(name) in METRICS, f"variable {variable['name']} queries {name}, which rayagg does not export"


def test_every_panel_is_complete_and_in_its_own_place(dashboard):
    panels = dashboard["panels"]
    assert isinstance(panels, list) and panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    cells = {}
    for panel in panels:
        where = f"panel {panel['id']} ({panel.get('title')!r})"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"].strip() and panel["description"].strip(), f"{where} needs a title and a description"
        assert panel["datasource"] == DATASOURCE, where
        pos = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(pos) and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, where
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        targets = panel["targets"]
        assert targets, f"{where} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), f"{where} repeats a refId"
        for target in targets:
            assert target["expr"].strip() and target.get("datasource", DATASOURCE) == DATASOURCE, where


def test_queries_use_only_exported_names(dashboard):
    unknown = {(title, name) for title, expr in exprs(dashboard) for name in NAME.findall(expr)
               if exported(name) not in METRICS}
    assert not unknown, f"queries name metrics that rayagg does not export (rayagg/runtime/telemetry.py METRICS): {sorted(unknown)}"
    assert all(NAME.search(expr) for _, expr in exprs(dashboard)), "a query uses no rayagg metric"


def test_every_exported_metric_has_a_panel(dashboard):
    used = {exported(name) for _, expr in exprs(dashboard) for name in NAME.findall(expr)}
    missing = sorted(set(METRICS) - used)
    assert not missing, (f"metrics in METRICS (rayagg/runtime/telemetry.py) that no panel of {DASHBOARD.name} "
                         f"shows: {missing}; a metric added to METRICS needs a panel in the dashboard "
                         f"(and a row in docs/grafana.md)")


def test_every_selector_filters_on_the_run(dashboard):
    unfiltered = [(title, match.group(0)) for title, expr in exprs(dashboard) for match in SELECTOR.finditer(expr)
                  if RUN_FILTER not in (match.group(2) or "")]
    assert not unfiltered, f"selectors without {RUN_FILTER}: {unfiltered}"


def test_only_counters_are_rated(dashboard):
    gauges = [(title, name) for title, expr in exprs(dashboard) for name in RATE.findall(expr)
              if METRICS[exported(name)].kind != COUNTER]
    assert not gauges, f"rate/increase of gauges: {gauges}"


def test_the_doc_lists_every_panel(dashboard):
    doc = DOC.read_text()
    absent = [panel["title"] for panel in dashboard["panels"] if panel["title"] not in doc]
    assert not absent, f"panels missing from {DOC.relative_to(ROOT)}: {absent}"
