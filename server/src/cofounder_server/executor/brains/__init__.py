"""Built-in brains: ``scripted`` (turns from config or a file), ``anthropic`` (Messages API)
and ``openai`` (Chat Completions: OpenAI, vLLM, Ollama, LiteLLM)."""
