"""`needseg bench`: needseg's speed and memory at scale, against the floors of its tools.

world.py writes a large synthetic company to the input contract's landing layout (DuckDB,
vectorised, bounded memory); floors.py measures what DuckDB alone and a plain pandas +
scikit-learn script take for the same data; run.py runs a full and an incremental cycle
stage by stage and prints the table.
"""
