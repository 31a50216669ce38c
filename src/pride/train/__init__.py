"""Training: the one loop (`loop.py`), the objectives, and the stage entry points."""
