"""Unified Orchestrator: a crew of LLM agents that turns a spec into a project."""

__version__ = "0.1.0"
