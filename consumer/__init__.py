"""The consumer: consumer-group workers that apply queued Stripe events to the subscription tables."""
