"""topoland: geometry and topology of neural-network loss landscapes."""
__version__ = "0.1.0"
