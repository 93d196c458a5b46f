"""The composition root: services built from configuration, the Starlette app, uvicorn serving, metrics."""
