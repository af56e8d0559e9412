"""Names shared by everything that logs DEQ statistics (W&B groups them by their prefix).

Logged quantities are named ``<stage>/<quantity>`` (``test/iters_to_converge``), so that W&B
panels group them by stage; the stages are Lightning's three loops.
"""
STAGES = ("train", "val", "test")
