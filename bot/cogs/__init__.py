"""Slash commands and event listeners; each cog only translates Discord into plain calls."""
