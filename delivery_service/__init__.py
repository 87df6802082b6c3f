"""The delivery service: confirms sends, relays messages to the MTA, keeps exact KPIs."""
