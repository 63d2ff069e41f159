"""Soft Reasoning for lm-evaluation-harness.

Kept import-free on purpose: the start-up hook (``_hook.py``) imports this package in every
Python process of the environment, so nothing heavy may load here.
"""

__version__ = "0.1.0"
