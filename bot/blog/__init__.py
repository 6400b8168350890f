"""Blog posts: the durable job queue, the prompt and the article file. Knows nothing of Discord."""
