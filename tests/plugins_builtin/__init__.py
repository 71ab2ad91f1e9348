"""Tests of the built-in campaign plugins in ``plugins/``, one file each."""
