"""needseg: B2B needs-based customer segmentation pipeline."""
