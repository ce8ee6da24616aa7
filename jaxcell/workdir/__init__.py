"""A study's workdir: every file's name (layout.py) and the one writer and one reader of each record."""
