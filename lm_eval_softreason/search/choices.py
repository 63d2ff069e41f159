"""The names a configuration can choose for ``search`` and ``acquisition``: one list each.

``config`` validates against these (and stays light: this module imports nothing); ``lm``
maps each search name to its function and ``search.bo`` implements each acquisition.
"""

SEARCHES = ("softreason", "random", "greedy", "sc")
ACQUISITIONS = ("logei", "ucb", "pi", "random")
