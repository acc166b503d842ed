"""Webhooks (SPEC §8): a document's terminal events, delivered from the database."""
