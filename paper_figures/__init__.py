"""Scripts that rebuild Table 2 and Figures 3-4 from a sweep's results (no model is rerun).

- :mod:`paper_figures.runs`: run records from the local results store or a W&B sweep.
- :mod:`paper_figures.table`: ``python -m paper_figures.table`` -> table2.{md,tex,csv}.
- :mod:`paper_figures.trajectories`: ``python -m paper_figures.trajectories`` -> fig3/fig4.png.
- ``python -m paper_figures``: both.
"""
