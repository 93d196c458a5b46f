"""The relay core: the sans-I/O relay, the dialect seam, the session core and live-session supervision. No I/O."""
