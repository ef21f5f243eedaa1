"""Exports a counter, a histogram and a gauge with the OpenTelemetry Python SDK to Vigil.

Usage: otel_sdk.py <endpoint> <token>
"""
import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

endpoint, token = sys.argv[1], sys.argv[2]
exporter = OTLPMetricExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"})
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
provider = MeterProvider(resource=Resource.create({"service.name": "sdk-test", "host.name": "ci"}), metric_readers=[reader])
meter = provider.get_meter("vigil-test")
requests = meter.create_counter("vigil.test.requests", unit="{request}")
latency = meter.create_histogram("vigil.test.latency", unit="s")
meter.create_observable_gauge("vigil.test.temperature", callbacks=[lambda _: [Observation(21.5)]], unit="Cel")
for i in range(10):
    requests.add(1, {"route": "/x"})
    latency.record(0.01 * i, {"route": "/x"})
ok = provider.force_flush(timeout_millis=10_000)
provider.shutdown()
sys.exit(0 if ok else 1)
