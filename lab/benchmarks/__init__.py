"""``siamstream bench NAME``: each benchmark prints a readable table and, as its last line, one JSON object."""
