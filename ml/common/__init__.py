"""Plumbing that ml, elk and serving share: the bottom of the layers, importing none above.

`ml` is the bottom layer, `elk` sits on it and `serving` on both (tests/unit/test_layers.py
keeps it so); what all three need lives here, so no package reaches up for it.
"""
