"""Stage 2 of the flow: raw legacy records → cleansed, mapped target entities.

``transforms`` holds the pure, named cleansing functions; ``config`` its config sections; ``mapping``
compiles a config's entity mapping into a fast :class:`~processors.mapping.Mapper`.
"""
