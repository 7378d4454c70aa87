"""The report stage: per-run metrics files and published numbers -> LaTeX, CSV and Markdown tables and plots.

``collect`` reads the runs, ``stats`` and ``tables`` compute the numbers, ``render`` and ``plots`` write
them, ``build.build_report`` does it all; display names live in ``names``. It imports pandas and
matplotlib, so the CLI imports it only when the report command runs.
"""
