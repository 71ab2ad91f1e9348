"""Fixture plugins: what a third-party plugin author writes, used by the tests
of plugin loading, isolation and the hook API (tests/test_plugins.py).

``data/`` holds fake installed distributions (``*.dist-info`` with an
``entry_points.txt`` in the ``regulars`` group), one working and one whose
module raises on import; the tests copy them to a temporary directory on
``sys.path``.
"""
