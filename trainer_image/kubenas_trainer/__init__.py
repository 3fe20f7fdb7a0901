"""The trainer image's package: `python -m kubenas_trainer --redis-url ... --namespace NS --name NAME`."""
