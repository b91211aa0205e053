"""What the receiver and the consumer share beyond the database: settings, the domain rules (tiers, entitlements,
reading Stripe events), time, logging and CLI support, and the Redis helpers both sides speak. Imports nothing
of models, receiver or consumer."""
