"""acdc_lib: a thin library behind the ACDC reproduction notebooks (see README.md and DESIGN.md)."""
__version__ = "0.1.0"
