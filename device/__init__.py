"""Haven kiosk runtime (device side)."""
