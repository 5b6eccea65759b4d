"""Haven hub and technician tool (host side)."""
