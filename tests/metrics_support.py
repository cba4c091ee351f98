"""Reading the center's metrics as Prometheus does: a real `center serve --metrics-port N` and a
plain-HTTP scrape of its loopback listener, parsed with prometheus_client's own parser."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import CenterProcess, cli_env, free_port


def scrape(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class MetricsCenter(CenterProcess):
    """`center serve` with its metrics listener on 127.0.0.1:metrics_port."""

    metrics_port: int = 0

    def __post_init__(self) -> None:
        self.metrics_port = self.metrics_port or free_port()

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, workers: int = 1) -> None:
        with open(self.data_dir.parent / f"center-{self.port}.log", "ab") as log:  # the child keeps its copy
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "center",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                env=cli_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_healthy()

    def scrape(self) -> dict:
        """What a Prometheus scrape of the listener gets (plain HTTP, loopback), parsed."""
        response = httpx.get(self.metrics_url, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return scrape(response.text)
