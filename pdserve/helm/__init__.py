"""Helm: the values models, rendering a profile into values, and the real helm binary."""
