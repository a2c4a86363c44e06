"""The executor: one asyncio task per running job, driving its agent's Think-Act-Observe loop."""
