"""Controller: search spaces, policies, strategies, the search loop and the ``nas`` CLI."""
