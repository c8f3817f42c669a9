"""Notebooks 03 and 04: the float model and its quantizable edits."""

from __future__ import annotations
