"""Relay bundles on the kiosk: the field team's stick as the link (SPEC.md "Relay bundles").

``export`` writes what the hub has not acknowledged to a stick (``haven-kiosk relay
export``); ``answers`` applies what the hub wrote back (``haven-kiosk relay import``).
Both run the kiosk's sync role (``device.sync.engine.Round``) over files instead of a
session: the envelope is ``protocol.sync.relay``, the files ``protocol.driver.relay_stick``.
"""
