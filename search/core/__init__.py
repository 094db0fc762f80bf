"""What a search is made of, as plain definitions and policies: budgets and their ledger,
deployment targets, the objectives, constraints, data-set specs, samplers, schedulers (with
their rung records), hypervolume, fault kinds, the rule for measuring a figure again, the
typed trial record, and two small utilities every layer needs (atomic file writes,
installed versions). Nothing here starts a process, opens a storage or imports torch; every
layer above uses these words and no other."""
