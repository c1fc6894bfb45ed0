"""The worker's web views: /metrics, and the JSON API over the partitions' snapshots. Every list of
the API is paged (``io.paging``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from slostream.config import Settings
from slostream.io.metrics import PipelineMetrics
from slostream.io.paging import PageError, page

if TYPE_CHECKING:
    from slostream.io.consumer import SloApp
    from slostream.io.ingest import IngestService


def _labels(labels: dict) -> str:
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


def _series_key(item: dict) -> list:
    return [item["service"], item["metric"], _labels(item["labels"])]


def register_views(app: SloApp, ingest: IngestService, metrics: PipelineMetrics, settings: Settings) -> None:
    def paged(web, request, lists: dict):
        try:
            return web.json(page(request.query, lists))
        except PageError as exc:
            return web.json({"error": str(exc)}, status=400)

    @app.page("/metrics")
    async def metrics_view(web, request):
        body, content_type = metrics.render()
        # aiohttp wants the charset apart from the media type.
        return web.bytes(body, content_type=content_type.split("; charset")[0])

    @app.page("/api/slos")
    async def slos_view(web, request):
        return paged(web, request, {"slos": (ingest.slo_statuses(), lambda s: [s["slo"]]),
                                    "configured": ([s.name for s in settings.slos], lambda name: [name])})

    @app.page("/api/alerts")
    async def alerts_view(web, request):
        snapshots = ingest.snapshots()
        silences = {silence["id"]: silence for snap in snapshots for silence in snap.silences}
        return paged(web, request, {"alerts": (ingest.firing_alerts(), lambda a: [a["fingerprint"]]),
                                    "silences": (list(silences.values()), lambda s: [s["id"]])})

    @app.page("/api/policies")
    async def policies_view(web, request):
        return paged(web, request, {
            "breaching": (ingest.statuses("policies"), lambda s: [s["policy"], *_series_key(s)]),
            "configured": ([p.name for p in settings.policies], lambda name: [name])})

    @app.page("/api/drift")
    async def drift_view(web, request):
        return paged(web, request, {
            # Newest first.
            "detections": (list(ingest.drift_recent), lambda e: [-e["data"]["detected_at"], e["id"]]),
            "in_progress": (ingest.statuses("drift"), lambda s: [*_series_key(s), s["aggregate"]])})

    @app.page("/api/recommendations")
    async def recommendations_view(web, request):
        """The newest recommendation of every target (a policy's warning or critical on a series, a
        threshold SLO's threshold)."""
        return paged(web, request, {"recommendations": (
            ingest.recommendation_statuses(),
            lambda r: [r["target"]["kind"], r["target"]["name"], r["target"]["level"], *_series_key(r)])})

    @app.page("/health")
    async def health_view(web, request):
        return web.json({"status": "alive"})

    @app.page("/ready")
    async def ready_view(web, request):
        if ingest.ready():
            return web.json({"status": "ready", "partitions": sorted(ingest.processors)})
        return web.json({"status": "recovering"}, status=503)
