"""The hub: kiosks' sync sessions, its store, enrolment and conflict review."""
