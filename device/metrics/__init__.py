"""The kiosk's metrics and usage: sync rounds, health each minute, how patients use the
page; counts and aggregates only, kept bounded on the card and sent to the hub as
telemetry records (``collector``, ``store``, ``telemetry``, ``reader``)."""
