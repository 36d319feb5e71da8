"""The analysis tools, built on training and evaluation: ``lamina compare`` (architectures at equal parameters and
budget), ``lamina bench`` (speed and memory against context length) and ``lamina recall`` (associative recall)."""
