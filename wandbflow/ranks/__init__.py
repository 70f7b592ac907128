"""The ranks of a launch (:mod:`wandbflow.launcher`), internal to it.

What a rank runs (:mod:`.tasks`), what it is told and how its process runs it (:mod:`.process`), how its output
reaches the notebook (:mod:`.output`), and what the launcher reads back when the ranks end (:mod:`.outcome`).
"""
