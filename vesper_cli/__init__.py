"""Vesper package."""
