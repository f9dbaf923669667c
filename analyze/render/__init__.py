"""Rendering computed reports: terminal table, CSV, JSON, Markdown (formats), Mermaid/DOT/SVG (graph), the HTML page.

Renders DataFrames it is given; may import analyze.reports to compute the HTML page's sections."""
