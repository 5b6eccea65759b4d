"""The technician's console on the kiosk's serial port: SMP (MCUmgr) over the console
framing, Haven frames and text, told apart packet by packet on one port."""
