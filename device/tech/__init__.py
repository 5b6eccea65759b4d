"""The kiosk's side of technicians: trusted time, revocations, the credential's check
(``TechnicianAccess``) and the Haven SMP group (SPEC.md, "Technicians")."""
