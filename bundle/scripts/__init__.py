"""Code of the amecam MONAI bundle: networks, losses, preprocessing, training and inference.

Modules import each other relatively, so this package works both as ``scripts`` (the MONAI bundle
convention: the bundle root on ``sys.path``) and as ``amecam_bundle.scripts`` (the template installed
with the toolkit).
"""
