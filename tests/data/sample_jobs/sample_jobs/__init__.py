"""A data team's own job, outside kindling: its declaration (job.py) and its program (main.py)."""
