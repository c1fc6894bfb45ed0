"""Pure streaming math: no Kafka, Faust or HTTP imports (a test enforces it)."""
