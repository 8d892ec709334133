"""Test helpers: tiny offline fixtures, the local Hub look-alike, subprocess workers and the golden-parity recorder."""
