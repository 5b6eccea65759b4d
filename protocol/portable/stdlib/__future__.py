"""MicroPython has no __future__ module; its compiler never evaluates annotations."""

annotations = True
