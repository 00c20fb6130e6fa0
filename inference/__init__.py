"""Stable Diffusion inference: model loading, generation and the job queue.

Never imports discord: what crosses in from the bot is frozen dataclasses.
"""
