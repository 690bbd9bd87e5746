"""Model assembly: composite InternVL from separate component checkpoints."""
