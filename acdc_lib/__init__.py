"""acdc_lib: a thin library behind the ACDC reproduction notebooks."""
__version__ = "0.1.0"
