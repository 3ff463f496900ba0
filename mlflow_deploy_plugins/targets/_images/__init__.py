"""Serving images: one builder (``builder.ensure_image``), one recipe per kind of image.

``probe`` finds the base image's Python and platform, ``wheels`` pins and downloads the runtime's
wheels on the host, ``package`` makes a wheel of this package, ``recipes`` holds the Dockerfiles
(today the ONNX runtime's; the mlserver target adds its own ``Recipe``).
"""
