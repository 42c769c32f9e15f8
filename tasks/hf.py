"""transformers, loaded whole before any of its names is used: a function that needs one imports
it from here (`from tasks.hf import AutoTokenizer`), never from transformers itself.

transformers' lazy top-level module is not thread-safe while it first loads: a thread that
imports it while another is loading it gets the module object that transformers then replaces in
sys.modules, and fails with "cannot import name 'AutoTokenizer' from 'transformers'". This module
is an ordinary one, so Python's import lock makes every other thread wait until it, and
transformers with it, has loaded. Threads do load models at once: the points of a sweep on Dask
are flow runs in threads of one process. It is imported where a model is first needed, not when
tasks.models is, so input that preflight refuses earlier is refused before transformers loads."""

from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer

__all__ = ["AutoConfig", "AutoTokenizer"]
