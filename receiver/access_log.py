"""gunicorn's access log, without the line for each webhook answered 200.

Those are nearly all the receiver's requests, and formatting and writing a line for each cost more CPU than
verifying and queueing the event (bench/receiver_load.py). They are counted in
billing_webhook_requests_total{status="200"} and listed in Stripe's dashboard; every other request (a webhook
refused with 400, 413 or 503, the API, health checks, /metrics) is logged as gunicorn logs it."""

from __future__ import annotations

from gunicorn.glogging import Logger

from receiver.webhooks import PATH


class ReceiverLogger(Logger):
    def access(self, resp, req, environ, request_time):
        if resp.status_code == 200 and req.path == PATH:
            return
        super().access(resp, req, environ, request_time)
