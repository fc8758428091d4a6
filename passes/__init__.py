"""qpass's built-in passes, one module per pass (installed as `qpass.passes`).

The pass registry imports every module here on first use; nothing in the core imports a
specific pass.
"""
