"""The turn's stages: listening, understanding, deciding, answering, speaking (each one module, one owner)."""
