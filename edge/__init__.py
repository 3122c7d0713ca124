"""Edge node: serves xiaozhi devices with local VAD, ASR, LLM and TTS."""
