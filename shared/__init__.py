"""What edge and cloud both speak: configuration, wire schema, NATS subjects, logging."""
