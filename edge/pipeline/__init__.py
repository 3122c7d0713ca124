"""The turn: its stage order, typed events, errors, observers and conversation history (no models, no transport)."""
