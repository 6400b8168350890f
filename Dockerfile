# The bot alone; compose.yaml runs it beside Ollama. Build: docker build -t ollama-discord-bot .
FROM python:3.12-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
# With the postgres extra (asyncpg): the same image runs one process on SQLite or gateway/worker roles.
RUN pip install --no-cache-dir '.[postgres]' \
    && useradd --create-home --uid 1000 bot \
    && mkdir /data && chown bot /data
USER bot

# The config is mounted at /app/config.toml (point database.path into /data); the token comes from the
# DISCORD_TOKEN environment variable, never from the image.
VOLUME ["/data"]
CMD ["python", "-m", "bot", "--config", "/app/config.toml"]
