"""The device side of the edge: the xiaozhi protocol, one session per WebSocket, paced output."""
