"""Reading the Grafana dashboards as Grafana does: their variables, and queries with the defaults filled in."""

from __future__ import annotations

import re

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
JOB_VARIABLES = {"receiver_job": "billing-receiver", "consumer_job": "billing-consumer"}  # CONTRACT.md's job names
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")  # $name, ${name}, ${name:format}, [[name]]


def variables(dashboard: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard.get("templating", {}).get("list", [])}


def defaults(dashboard: dict) -> dict[str, str]:
    """Each template variable's value as Grafana puts it in a query when nobody changed it: its current value,
    or its allValue when that is All."""
    values = {}
    for name, variable in variables(dashboard).items():
        value = variable.get("current", {}).get("value")
        value = value if isinstance(value, list) else [value]
        values[name] = variable.get("allValue") if value == ["$__all"] else "|".join(value)
    return values


def interpolate(expr: str, dashboard: dict, builtins: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """`expr` as Grafana sends it with the dashboard's defaults; an unknown variable is left as it is."""
    for variable, value in builtins.items():
        expr = expr.replace(variable, value)
    values = defaults(dashboard)
    return VARIABLE.sub(lambda m: values.get(m[1] or m[2] or m[3], m[0]), expr)
