"""The Discord side of imagine-bot: client, cogs, settings, store and rate limits."""
