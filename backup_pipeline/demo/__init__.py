"""Demo data: realistic records (data) produced to the three topics (producer)."""
