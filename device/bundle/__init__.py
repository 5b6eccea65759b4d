"""Debug bundles: what the kiosk gives a field team (``haven tech bundle``)."""
