"""Notebook 08: the int8 arithmetic written with integers."""

from __future__ import annotations
