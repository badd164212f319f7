"""The text generation service: story continuation with NovelAI-grade samplers, a storytelling
context builder, streaming and continuous batching (`python -m services.text`)."""
