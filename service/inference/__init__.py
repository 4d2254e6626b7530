"""Everything between a validated request and image bytes: sessions, batching, latents, encoding."""
