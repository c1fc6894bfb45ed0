"""The worker's web views: /metrics, and the JSON API over the partitions' snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slostream.config import Settings
from slostream.io.metrics import PipelineMetrics

if TYPE_CHECKING:
    from slostream.io.consumer import SloApp
    from slostream.io.ingest import IngestService


def register_views(app: SloApp, ingest: IngestService, metrics: PipelineMetrics, settings: Settings) -> None:
    @app.page("/metrics")
    async def metrics_view(web, request):
        body, content_type = metrics.render()
        # aiohttp wants the charset apart from the media type.
        return web.bytes(body, content_type=content_type.split("; charset")[0])

    @app.page("/api/slos")
    async def slos_view(web, request):
        return web.json({"slos": ingest.slo_statuses(), "configured": [s.name for s in settings.slos]})

    @app.page("/api/alerts")
    async def alerts_view(web, request):
        snapshots = ingest.snapshots()
        silences = {silence["id"]: silence for snap in snapshots for silence in snap.silences}
        return web.json({"alerts": ingest.firing_alerts(), "silences": list(silences.values())})

    @app.page("/api/policies")
    async def policies_view(web, request):
        return web.json({"breaching": ingest.statuses("policies"), "configured": [p.name for p in settings.policies]})

    @app.page("/api/drift")
    async def drift_view(web, request):
        return web.json({"detections": list(reversed(ingest.drift_recent)), "in_progress": ingest.statuses("drift")})

    @app.page("/api/recommendations")
    async def recommendations_view(web, request):
        """The newest recommendation of every target (a policy's warning or critical on a series, a
        threshold SLO's threshold)."""
        return web.json({"recommendations": ingest.recommendation_statuses()})

    @app.page("/health")
    async def health_view(web, request):
        return web.json({"status": "alive"})

    @app.page("/ready")
    async def ready_view(web, request):
        if ingest.ready():
            return web.json({"status": "ready", "partitions": sorted(ingest.processors)})
        return web.json({"status": "recovering"}, status=503)
