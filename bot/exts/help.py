"""/help: what the bot does and how to use it, for the member asking (ephemeral)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.bot import LLMBot

HELP_TEXT = """\
**Chat** — mention me with a question and I answer here, as I write. Reply to my answer to go on with the \
conversation: the reply chain is what I remember (in a DM, the DM itself). `/chat reset` starts afresh \
in a DM or a thread. Buttons on my answer: **Stop** while I write, **Regenerate** and (when I was cut off) \
**Continue** after. `/ask question:…` asks with a slash command (`private:True`: only you see the answer).
**Blog posts** — `/blog new topic:…` queues an article (style, tone, length and tags are optional); a status \
message shows its progress (with a **Cancel** button) and the finished post arrives here as a Markdown file. \
`/blog status`, `/blog list` and `/blog cancel` follow your jobs.
**Moderators** (Manage Server) — `/llm status`, `/llm queue`, `/llm cancel`, `/llm pause`, `/llm resume`, \
`/llm config`, `/llm audit`."""


class Help(commands.Cog):
    """The /help command."""

    def __init__(self, bot: LLMBot) -> None:
        self.bot = bot

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to talk to me, write blog posts, and what moderators can do."""
        await interaction.response.send_message(HELP_TEXT, ephemeral=True)


async def setup(bot: LLMBot) -> None:
    await bot.add_cog(Help(bot))
