"""omnicart: an MLOps platform for e-commerce AI on one view of the shop's customers."""

__version__ = "0.1.0"
