"""Fake data for the demo and the tests: people, institutions and sample batches."""
