"""Scripts that rebuild Table 2 and Figures 3-4 from the sweep's results (no model is rerun)."""
