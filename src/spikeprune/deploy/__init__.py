"""Running compressed networks: the event-driven CPU inference engine (spikes drive gathers of the surviving, quantized weights)."""
