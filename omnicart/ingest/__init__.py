"""Ingest: channel data from the landing area into the lake, pseudonymised (see daily.py)."""
