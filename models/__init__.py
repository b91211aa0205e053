"""What the receiver and the consumer share: configuration, tables, the Stripe event reader, Redis keys."""
