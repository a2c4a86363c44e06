"""Built-in brains: ``scripted`` (turns from config or a file) and ``anthropic`` (Messages API)."""
