"""The chaos soak (issue 10 item 7): real rotator processes against the emulator
and a real OpenBao under faults, kills, races, restarts and seals."""
