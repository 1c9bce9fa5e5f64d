"""Placeholder: the OpenBao fixture is being written."""
