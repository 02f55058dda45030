"""The deployable policy: a self-contained directory, Python API, HTTP server and export."""
