"""Placeholder: the emulator fixture is being written."""
