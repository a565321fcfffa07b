"""`pdserve status`: a live view of a gateway's pools and routes (see `pdserve.status.command`).

scrape (pure: /metrics text, rates, histogram quantiles) -> report (pure: the figures shown)
-> view (rich tables); poll reads a gateway; command is the CLI loop.
"""
