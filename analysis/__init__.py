"""Run and study analysis (tables, plots, HTML report) — filled by the sweep issue."""
