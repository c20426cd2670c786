"""Reading a node's ``/metrics`` the way Prometheus does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: Running) -> Samples:
    """Every sample of the node's ``/metrics``, by name and labels."""
    async with app.client() as http:
        r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series not made yet (a labelled series
    appears on its first use). Tests compare values before and after."""
    return samples.get((name, frozenset(labels.items())), 0.0)
