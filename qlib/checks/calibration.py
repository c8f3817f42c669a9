"""Notebook 06: prepare, calibrate and convert written with torch's calls."""

from __future__ import annotations
