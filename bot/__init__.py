"""A Discord bot that puts local LLMs to work: streamed chat and durable blog generation."""

__version__ = "0.1.0"
