"""The shipped Grafana dashboard (cluster/grafana/wmtp_dashboard.json) is valid JSON and its
queries name exactly the Prometheus metrics wmtp exports (wmtp.orchestration.dashboard)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from wmtp.orchestration.dashboard import GRAFANA_DASHBOARD, prometheus_names

REPO = Path(__file__).resolve().parents[2]


def test_dashboard_json_names_exactly_the_exported_metrics():
    dashboard = json.loads((REPO / GRAFANA_DASHBOARD).read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\bray_wmtp_\w+", e)}
    assert named == prometheus_names()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = {v for e in exprs for v in re.findall(r"\$(\w+)", e)}
    assert used <= variables, used - variables
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
