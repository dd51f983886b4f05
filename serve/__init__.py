"""Serving stage (``projgan.serve``): backends, dynamic batcher, FastAPI app, Gradio UI.

Imports only the core and web libraries, never training code or timm.
"""
