"""Serving images: one builder (``builder``) and one Dockerfile recipe per kind of image
(``recipes``), fed by ``probe`` (base-image platform), ``wheels`` and ``package``."""
