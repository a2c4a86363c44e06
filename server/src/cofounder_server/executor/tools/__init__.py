"""Built-in tools. ``narrate`` reports progress and opens and closes phases."""
