"""Models: one CrewAI adapter in front of every backend (embedded, scripted)."""
