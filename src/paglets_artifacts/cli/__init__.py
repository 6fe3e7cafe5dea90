"""The command line: the ``paglets-artifacts`` commands, their console views, the demo.

Floor 5, the top: may use every floor below (the paglets-host attachment included).
"""
