"""The stand-in ``wandb`` of tests/test_wandb.py for the ``train.py`` processes that wandb's own
agent starts there: Python imports this module at start-up when this folder is on PYTHONPATH.

``wandb.init`` returns a run that reaches no server and, when finished, appends what it was
given (init arguments, summary, exit code) as one JSON line to $WANDB_STANDIN_LOG.
"""
import json
import os

if os.environ.get("WANDB_STANDIN_LOG"):
    import wandb

    class StandInRun:
        """What the code under test does with a W&B run, recorded."""

        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.id = os.environ.get("WANDB_RUN_ID") or kwargs.get("id")
            self.name = kwargs.get("name")
            self.config = dict(kwargs.get("config") or {})
            self.summary = {}

        def define_metric(self, *args, **kwargs):
            pass

        def log(self, *args, **kwargs):
            pass

        def log_artifact(self, artifact):
            pass

        def finish(self, exit_code=None, quiet=None):
            record = dict(id=self.id, name=self.name, summary=self.summary,
                          exit_code=exit_code or 0, sweep_id=os.environ.get("WANDB_SWEEP_ID"),
                          kwargs={k: v for k, v in self.kwargs.items() if k != "config"})
            with open(os.environ["WANDB_STANDIN_LOG"], "a") as log:
                log.write(json.dumps(record, default=str) + "\n")

    wandb.init = StandInRun
