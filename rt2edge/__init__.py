"""rt2edge: distill, quantize, export and benchmark RT-2-style vision-language-action policies.

Importing this package (and `rt2edge.actions`, `rt2edge.artifact`, `rt2edge.runtime`) never imports
torch or transformers: a robot installs `rt2edge[cpu]` or `rt2edge[gpu]` and nothing else.
"""

__version__ = "0.1.0"
