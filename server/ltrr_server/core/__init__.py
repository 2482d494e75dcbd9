"""The learning loop, in parts by job; each servicer takes only the parts it uses.

- ``policies.PolicyBook``: policies, their lineages and serving models; restore at start; admin changes.
- ``decisions.Decisions``: Decide and Retrieve: draw, log, wait for rewards.
- ``rewards.Rewards``: rewards classified, committed and joined to their decisions; joins to the learner.
- ``models.Models`` and ``sessions.Sessions``: XR-Linear and autocompletion, the registry, promotion.
- ``ltrr.Ltrr``: builds them over one database and runs their start-up and shutdown.

Everything runs on the asyncio event loop thread except SQL writes (the writer), learning (the
learner process) and start-up, which runs before the calls it serves are let in.
"""
