"""The controller image's package: `python -m kubenas_controller --spec FILE ...`."""
