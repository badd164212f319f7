"""The autoscalers scale on series the services really export: every custom metric an HPA names is
served by a prometheus-adapter rule, and every rule's series is a gauge of the scaled process's
metrics module (services/<process>/metrics.py), summed over its labels into one value per pod."""

from __future__ import annotations

import importlib

import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.kube import autoscaled_series, named, objects, prometheus_adapter_rules

OVERLAY = "gpu"


def exported_metrics(process: str) -> dict[str, MetricWrapperBase]:
    """{series name: collector} of the process's own metrics module."""
    module = importlib.import_module(f"services.{process}.metrics")
    found = {}
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for metric in value.describe():
                found[metric.name] = value
    return found


def _hpas() -> list[dict]:
    hpas = objects(OVERLAY, "HorizontalPodAutoscaler")
    assert hpas, "the GPU overlay has no HorizontalPodAutoscaler"
    return hpas


def test_every_hpa_targets_a_model_server_with_custom_metrics_from_the_adapter() -> None:
    rules = prometheus_adapter_rules()
    for hpa in _hpas():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        named(OVERLAY, "Deployment", target["name"])
        kinds = {metric["type"] for metric in hpa["spec"]["metrics"]}
        assert "Pods" in kinds, f"{hpa['metadata']['name']}: no per-pod (queue-depth) metric"
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                name = metric["pods"]["metric"]["name"]
                assert name in rules, (f"{hpa['metadata']['name']}: no prometheus-adapter rule serves {name!r} "
                                       f"(served: {sorted(rules)})")


@pytest.mark.parametrize("process", ["text", "image"])
def test_autoscaled_series_are_gauges_the_service_exports(process: str) -> None:
    series = autoscaled_series(OVERLAY).get(process)
    assert series, f"no HorizontalPodAutoscaler scales fabula-{process} on a custom metric"
    exported = exported_metrics(process)
    for name in series:
        assert name in exported, (f"fabula-{process} scales on {name!r}, which services/{process}/metrics.py "
                                  f"does not export (it exports {sorted(exported)})")
        collector = exported[name]
        assert collector._type == "gauge", f"{name} is a {collector._type}; AverageValue needs a gauge"
        rule = next(rule for rule in prometheus_adapter_rules().values() if rule["series"] == name)
        if collector._labelnames:
            # One value per pod: the per-model series must be summed, grouped by the pod only.
            assert rule["metricsQuery"].replace(" ", "").startswith("sum(<<.Series>>{<<.LabelMatchers>>})by(<<.GroupBy>>)"), \
                f"{name} has labels {collector._labelnames}: the adapter must sum them per pod"
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"]), name


def test_every_adapter_rule_serves_an_exported_series() -> None:
    exported = {name for process in ("text", "image") for name in exported_metrics(process)}
    for served, rule in prometheus_adapter_rules().items():
        assert rule["series"] in exported, f"prometheus-adapter serves {served!r} from {rule['series']!r}, exported by no service"
