"""Tests for m365-policyd; ``tests.pki`` is the shared test certificate authority."""
