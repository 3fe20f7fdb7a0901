"""`kubenas run` on one machine: an embedded redis-server, the controller and trainer
processes, a live progress bar and a results directory."""
