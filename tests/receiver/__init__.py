"""Tests of receiver/: the webhook route, the /v1 API and its cache, the docs, `serve` and `send`."""
