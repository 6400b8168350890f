"""The real-model lane: the bot end to end against llama-cpp-python's server running SmolLM2-135M."""
