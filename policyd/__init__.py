"""m365-policyd: predict Microsoft 365 relay refusals (550 5.7.64) in front of Postfix."""

__version__ = "0.1.0"
