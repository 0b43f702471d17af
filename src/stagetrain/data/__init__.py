"""Data in: sources (download), organize (validate, map, dedupe, split), synthetic generator."""
