"""Tests of billing/, the shared non-database code: config, tiers, Stripe's event shapes, entitlements, build
info, and what every CLI shares."""
