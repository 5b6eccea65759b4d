"""The kiosk's check-in page: a local HTTP server (``http``, with ``request`` and
``origin``), its routes (``app``),
the check-in rules (``checkin``), the staff screen (``staff``), live status
(``live``) and the static page in ``static/``."""
