"""``python -m search``: the command line, its read-only views of a study, and log routing.
Nothing below imports this layer."""
