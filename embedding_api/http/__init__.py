"""The HTTP layer: parses requests, calls the service, encodes answers. The only place that knows FastAPI."""
