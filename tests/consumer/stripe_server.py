"""A local stand-in for the part of Stripe's API we read, for the real `stripe` client to talk to (point it here
with STRIPE_API_BASE): `GET /v1/events` with Stripe's pagination (`limit`, `starting_after`, `ending_before`,
`has_more`) and filters (`created[gte|gt|lte|lt]`, `types[]`, `type`, `delivery_success`), and
`GET /v1/subscriptions/<id>`. It answers as Stripe does: newest first, Stripe's error bodies, a 401 for a wrong
key. A test can make the next requests answer 429 with Retry-After, 500, or slowly (a page that times out)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.stripe_helpers import PEER_EVENTS

API_KEY = "sk_test_suite_key_for_the_fake_stripe"
MAX_LIMIT, MAX_TYPES = 100, 20


@dataclasses.dataclass
class Stored:
    event: dict
    delivery_success: bool
    seq: int  # Stripe orders events of one second by creation too: newer first


@dataclasses.dataclass
class Fault:
    status: int | None = None  # answer this instead (None: answer normally, after the delay)
    retry_after: float | None = None
    delay: float = 0.0
    path: str = "/v1/"  # only requests whose path starts with this


@dataclasses.dataclass
class Request:
    path: str
    params: dict[str, list[str]]
    at: float  # time.monotonic() at its arrival
    status: int = 0  # 0 until answered


class FakeStripe:
    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.subscriptions: dict[str, dict] = {}
        self.requests: list[Request] = []
        self._events: list[Stored] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeStripe":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what a test sets up -----------------------------------------------------------------------------

    def add_event(self, event: dict, delivery_success: bool = False) -> dict:
        """An event Stripe keeps; `delivery_success=False`: its webhook failed (or is still being retried)."""
        with self._lock:
            self._events.append(Stored(event, delivery_success, len(self._events)))
        return event

    def fail(self, status: int, times: int = 1, retry_after: float | None = None, path: str = "/v1/") -> None:
        """The next `times` requests (to `path`...) answer `status` (429 with Retry-After, 500, ...)."""
        with self._lock:
            self._faults.extend(Fault(status, retry_after, path=path) for _ in range(times))

    def slow(self, seconds: float, times: int = 1, path: str = "/v1/") -> None:
        """The next `times` requests answer only after `seconds` (a client with a shorter timeout gives up)."""
        with self._lock:
            self._faults.extend(Fault(delay=seconds, path=path) for _ in range(times))

    def event_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/v1/events"]

    # --- the API -----------------------------------------------------------------------------------------

    def answer(self, path: str, params: dict[str, list[str]], authorization: str | None) -> tuple[int, dict, dict]:
        """(status, headers, body) for one GET."""
        with self._lock:
            fault = next((f for f in self._faults if path.startswith(f.path)), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status == 429:
                headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                return 429, headers, _error("Request rate limit exceeded.", code="rate_limit")
            if fault.status is not None:
                return fault.status, {}, _error("An unknown error occurred", type_="api_error")
        if authorization != f"Bearer {self.api_key}":
            return 401, {}, _error(f"Invalid API Key provided: {(authorization or '')[7:15]}****")
        if path == "/v1/events":
            return self._list_events(params)
        if path.startswith("/v1/subscriptions/"):
            subscription_id = urllib.parse.unquote(path.rsplit("/", 1)[1])
            found = self.subscriptions.get(subscription_id)
            if found is None:
                return (
                    404,
                    {},
                    _error(f"No such subscription: '{subscription_id}'", code="resource_missing", param="id"),
                )
            return 200, {}, found
        return 404, {}, _error(f"Unrecognized request URL (GET: {path}).")

    def _list_events(self, params: dict[str, list[str]]) -> tuple[int, dict, dict]:
        one = {name: values[-1] for name, values in params.items()}
        try:
            limit = int(one.get("limit", "10"))
        except ValueError:
            return 400, {}, _error("Invalid integer: limit", param="limit")
        if not 1 <= limit <= MAX_LIMIT:
            return 400, {}, _error(f"This value must be less than or equal to {MAX_LIMIT}.", param="limit")
        types = [v for name, values in params.items() if name == "types[]" or name.startswith("types[") for v in values]
        if types and "type" in one:
            return 400, {}, _error("You may only specify one of these parameters: type, types.", param="types")
        if len(types) > MAX_TYPES:
            return 400, {}, _error(f"You may pass at most {MAX_TYPES} types.", param="types")
        delivery = one.get("delivery_success")
        if delivery not in (None, "true", "false"):
            return 400, {}, _error("Invalid boolean: delivery_success", param="delivery_success")
        bounds = {op: int(one[f"created[{op}]"]) for op in ("gte", "gt", "lte", "lt") if f"created[{op}]" in one}

        def wanted(stored: Stored) -> bool:
            event, created = stored.event, stored.event["created"]
            return (
                (not types or event["type"] in types)
                and one.get("type", event["type"]) == event["type"]
                and (delivery is None or stored.delivery_success == (delivery == "true"))
                and created >= bounds.get("gte", created)
                and created > bounds.get("gt", created - 1)
                and created <= bounds.get("lte", created)
                and created < bounds.get("lt", created + 1)
            )

        with self._lock:
            matching = sorted(
                (s for s in self._events if wanted(s)), key=lambda s: (s.event["created"], s.seq), reverse=True
            )
        ids = [s.event["id"] for s in matching]
        start, end = 0, len(matching)
        if "starting_after" in one:
            if one["starting_after"] not in ids:
                return 400, {}, _error(f"No such event: '{one['starting_after']}'", param="starting_after")
            start = ids.index(one["starting_after"]) + 1
        elif "ending_before" in one:  # the page just before it, still newest first
            if one["ending_before"] not in ids:
                return 400, {}, _error(f"No such event: '{one['ending_before']}'", param="ending_before")
            end = ids.index(one["ending_before"])
            start = max(0, end - limit)
        page = matching[start : min(end, start + limit)]
        has_more = start + limit < end if "ending_before" not in one else start > 0
        return 200, {}, {"object": "list", "data": [s.event for s in page], "has_more": has_more, "url": "/v1/events"}


def _error(message: str, type_: str = "invalid_request_error", **extra: str) -> dict:
    return {"error": {"message": message, "type": type_, **extra}}


def _handler(stripe: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            params: dict[str, list[str]] = {}
            for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
                params.setdefault(name, []).append(value)
            request = Request(url.path, params, time.monotonic())
            stripe.requests.append(request)
            status, headers, body = stripe.answer(url.path, params, self.headers.get("Authorization"))
            request.status = status
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_fake{len(stripe.requests)}")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                pass

        def log_message(self, *args) -> None:
            pass

    return Handler


def peer_events(created: int) -> list[dict]:
    """The captured events of ../shared/fixtures/peer_events/, as Stripe would list them: each id once (the
    fixtures reuse ids, Stripe never does) and created at `created`, inside a test's window."""
    seen, found = set(), []
    for path in sorted(PEER_EVENTS.glob("*.json")):
        if path.name == "index.json":
            continue
        event = json.loads(path.read_bytes())
        if event.get("object") != "event" or event["id"] in seen:
            continue
        seen.add(event["id"])
        found.append({**event, "created": created})
    return found
