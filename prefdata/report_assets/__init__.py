"""Inline SVG charts and styles for prefdata.report (no plotting dependency)."""
