"""Reading Stripe's API, for the backfill, the reconciler and the drift report: events (newest first, every
page) and subscriptions, as the JSON Stripe returned (the library's objects hold Decimal fields that
json.dumps refuses, and we queue events as Stripe's JSON, the way a webhook brings them).

stripe-python retries timeouts, refused connections and 5xx itself (`network_retries`), but a 429 only when
Stripe marks it Stripe-Should-Retry, so rate limits are handled here: wait for Retry-After (at least the
backoff), up to a total wait, then give up with StripeApiError. Every failure is that one exception, with a
message that never shows the API key."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import stripe

from billing.config import Settings, short

log = logging.getLogger(__name__)
# stripe-python logs every request and response at INFO (URLs, not keys): our own lines say what matters.
logging.getLogger("stripe").setLevel(logging.WARNING)
PAGE_SIZE = 100  # Stripe's most per page


class StripeApiError(Exception):
    """Stripe did not give us what we asked for (refused, unreachable, rate-limited too long, or an answer that
    is not a list); the message is the one line to show."""


class StripeApi:
    def __init__(
        self,
        api_key: str,
        api_base: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        network_retries: int = 2,
        rate_limit_wait: float = 300.0,
        sleep: Callable[[float], object] = time.sleep,
    ):
        self.api_key = api_key
        self.api_base = api_base
        self.rate_limit_wait = rate_limit_wait  # the most we wait out 429s for one request, in all
        self._sleep = sleep
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            max_network_retries=network_retries,
            http_client=stripe.RequestsClient(timeout=(connect_timeout, timeout)),
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> "StripeApi":
        settings.require_stripe_api_key()
        return cls(settings.stripe_api_key, settings.stripe_api_base, **options)

    def list_events(
        self,
        *,
        created_gte: int,
        created_lte: int | None = None,
        types: Sequence[str] = (),
        delivery_success: bool | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every event of the window (and types, and delivery state), newest first, page after page."""
        params: dict[str, Any] = {"limit": PAGE_SIZE, "created": {"gte": created_gte}}
        if created_lte is not None:
            params["created"]["lte"] = created_lte
        if types:
            params["types"] = list(types)
        if delivery_success is not None:
            params["delivery_success"] = delivery_success
        while True:
            page = self._get("/v1/events", params)
            events = page.get("data")
            if not isinstance(events, list) or not all(
                isinstance(e, dict) and isinstance(e.get("id"), str) for e in events
            ):
                raise StripeApiError("Stripe's answer to GET /v1/events is not a list of events")
            yield from events
            if not events or page.get("has_more") is not True:
                return
            params["starting_after"] = events[-1]["id"]

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """The subscription as Stripe has it now; None when Stripe has no such subscription."""
        try:
            return self._get(f"/v1/subscriptions/{subscription_id}", {})
        except _Missing:
            return None

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        waited, attempt = 0.0, 0
        while True:
            attempt += 1
            try:
                response = self._client.raw_request("get", path, **params)
                body = json.loads(response.body)
            except stripe.RateLimitError as exc:
                delay = retry_delay(exc.headers, attempt)
                if waited + delay > self.rate_limit_wait:
                    raise StripeApiError(
                        f"Stripe is rate limiting us (429 on GET {path}, {attempt} times, "
                        f"{waited:.0f}s waited); try again later"
                    ) from None
                log.warning("Stripe rate limit (429) on GET %s; retrying in %.1fs", path, delay)
                self._sleep(delay)
                waited += delay
                continue
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404 and exc.code == "resource_missing":
                    raise _Missing() from None
                raise StripeApiError(self._describe(exc, path)) from None
            except stripe.StripeError as exc:
                raise StripeApiError(self._describe(exc, path)) from None
            except ValueError:  # not JSON
                raise StripeApiError(f"Stripe's answer to GET {path} is not JSON") from None
            if not isinstance(body, dict):
                raise StripeApiError(f"Stripe's answer to GET {path} is not a JSON object")
            return body

    def _describe(self, exc: stripe.StripeError, path: str) -> str:
        key = f"STRIPE_API_KEY ({short(self.api_key)})"
        if isinstance(exc, stripe.AuthenticationError):
            text = f"Stripe refused {key}: {exc.user_message}"
        elif isinstance(exc, stripe.PermissionError):
            text = f"{key} may not GET {path}: give the restricted key read access to it ({exc.user_message})"
        elif isinstance(exc, stripe.APIConnectionError):
            cause = re.search(r"\(Network error: (\w+)", exc.user_message or "")
            text = f"no answer from Stripe at {self.api_base} ({cause.group(1) if cause else 'network error'})"
        else:
            text = f"Stripe answered {exc.http_status} to GET {path}: {exc.user_message}"
        return " ".join(text.replace(self.api_key, short(self.api_key)).split())


class _Missing(Exception):
    pass


def retry_delay(headers: Any, attempt: int) -> float:
    """How long to wait before the `attempt`+1st try after a 429: its Retry-After (seconds), and never less
    than the backoff (0.5 s doubling, up to 30 s) so a Retry-After of 0 cannot make us hammer Stripe."""
    backoff = min(0.5 * 2 ** (attempt - 1), 30.0)
    value = None
    for name, raw in (headers or {}).items():
        if name.lower() == "retry-after":
            value = raw
    try:
        retry_after = float(value) if value is not None else 0.0
    except ValueError:  # an HTTP date: Stripe sends seconds, so just back off
        retry_after = 0.0
    return float(max(retry_after, backoff) if not math.isnan(retry_after) else backoff)
