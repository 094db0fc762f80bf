"""Experiments that check the search's assumptions with real training runs."""
