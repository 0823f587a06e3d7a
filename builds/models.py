"""Models of the builds app."""
