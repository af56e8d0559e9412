"""Scripts that rebuild Table 2 and Figures 3-4 from a sweep's results (no model is rerun).

- :mod:`paper_figures.runs`: run records from the local results store or a W&B sweep.
- :mod:`paper_figures.cli`: what the scripts share (source options, checked reading, errors).
- :mod:`paper_figures.style`: figures at a paper's text width, written as PDF and PNG.
- :mod:`paper_figures.heatmap`: one density heatmap of residual trajectories (a panel of
  Figures 3-4; the run layer logs it to W&B too).
- :mod:`paper_figures.table`: ``python -m paper_figures.table`` -> table2.{md,tex,csv}.
- :mod:`paper_figures.trajectories`: ``python -m paper_figures.trajectories`` -> fig3, fig4.
- :mod:`paper_figures.energy`: ``python -m paper_figures.energy`` -> energy (beyond the paper).
- ``python -m paper_figures``: all three.

It reads only the results-store format (``runner.store``, ``runner.result_files``) and the
experiment registry (``deq_modules.experiments``): no torch, no Lightning.
"""
