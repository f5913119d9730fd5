"""The REST sidecar (FastAPI): thin routes over the engine, the user store and the cache."""
