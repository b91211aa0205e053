"""billing_build_info{version, python} 1: which release and Python a process runs, for the receiver's and the
consumers' /metrics alike. A collector rather than a Gauge: in multiprocess mode (the receiver) a Gauge would be
kept once per worker, in files. Import it only from the metrics modules: prometheus_client must not be imported
before the receiver has set up its multiprocess directory (receiver/serve.py)."""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from billing.cli_support import version


class BuildInfo(Collector):
    def __init__(self) -> None:
        self.labels = [version(), platform.python_version()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "billing_build_info",
            "The running release (package version) and Python; always 1",
            labels=["version", "python"],
        )
        family.add_metric(self.labels, 1)
        return [family]
